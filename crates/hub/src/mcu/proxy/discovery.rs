//! Which proxies there are: DNS (one connection per address) or etcd, and
//! how near one is to a client.

use super::*;

impl Inner {
    /// Make the proxy list `urls`: connect to new ones, drain removed ones.
    pub(super) fn set_urls(&self, urls: &[String]) {
        let mut conns = self.conns.write();
        for url in urls {
            if !conns.iter().any(|c| &c.url == url) {
                info!(%url, "MCU proxy added");
                let conn = self.connect(url);
                conns.push(conn);
            }
        }
        let (keep, removed): (Vec<_>, Vec<_>) =
            conns.drain(..).partition(|c| urls.contains(&c.url));
        *conns = keep;
        drop(conns);
        for conn in removed {
            info!(url = %conn.url, "MCU proxy removed, draining it");
            conn.draining.store(true, Ordering::Release);
            tokio::spawn(async move {
                while !conn.clients.lock().is_empty() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                conn.cancel.cancel();
            });
        }
    }

    /// `dnsdiscovery`: one connection per address of each URL's host,
    /// re-resolved every [`DNS_INTERVAL`] (and at once after a reload).
    pub(super) async fn follow_dns(self: Arc<Self>) {
        loop {
            let urls = self.dns_urls.lock().clone();
            let mut resolved = Vec::new();
            for url in &urls {
                let Some((scheme, rest)) = url.split_once("://") else {
                    continue;
                };
                let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
                let hostport = if hostport.contains(':') {
                    hostport.to_owned()
                } else if scheme == "wss" {
                    format!("{hostport}:443")
                } else {
                    format!("{hostport}:80")
                };
                let looked_up = tokio::net::lookup_host(hostport.clone()).await;
                match looked_up {
                    Ok(addrs) => {
                        for a in addrs {
                            let path = if path.is_empty() {
                                String::new()
                            } else {
                                format!("/{path}")
                            };
                            resolved.push(format!("{scheme}://{a}{path}"));
                        }
                    }
                    Err(e) => warn!(%url, error = %e, "cannot resolve proxy host"),
                }
            }
            resolved.sort();
            resolved.dedup();
            self.set_urls(&resolved);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.dns_changed.notified() => {}
                _ = tokio::time::sleep(DNS_INTERVAL) => {}
            }
        }
    }

    /// `urltype = etcd`: follow the proxies listed under the key prefix.
    pub(super) async fn discover(
        self: Arc<Self>,
        client: runtime::etcd::EtcdClient,
        prefix: String,
    ) {
        let mut known: Option<Vec<String>> = None;
        loop {
            match client.get_prefix(&prefix).await {
                Ok(kvs) => {
                    let mut urls: Vec<String> = kvs
                        .iter()
                        .filter_map(|(key, value)| {
                            let v: Value = serde_json::from_slice(value).ok()?;
                            let address = v["address"].as_str()?;
                            match parse_urls(address) {
                                Ok(mut u) => u.pop(),
                                Err(e) => {
                                    warn!(%key, error = %e, "ignoring proxy address from etcd");
                                    None
                                }
                            }
                        })
                        .collect();
                    urls.sort();
                    urls.dedup();
                    if known.as_ref() != Some(&urls) {
                        info!(?urls, "proxy list from etcd");
                        self.set_urls(&urls);
                        known = Some(urls);
                    }
                }
                Err(e) => warn!(error = %e, "cannot read proxy list from etcd"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(ETCD_POLL) => {}
            }
        }
    }

    /// A new connection task for `url`.
    fn connect(&self, url: &str) -> Arc<ProxyConn> {
        let (tx, rx) = mpsc::channel(256);
        let conn = Arc::new(ProxyConn {
            url: url.to_owned(),
            cmd: tx,
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            load: AtomicI64::new(0),
            country: Mutex::new(String::new()),
            features: Mutex::new(Vec::new()),
            bandwidth: Mutex::new(Default::default()),
            next_msg: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            lost_publishers: Mutex::new(Vec::new()),
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            cancel: self.cancel.child_token(),
        });
        tokio::spawn(run_conn(conn.clone(), rx, conn.cancel.clone()));
        conn
    }

    /// Connected, not draining; by load (upstream's order), then proxies
    /// in the client's country first, then those on its continents.
    pub(super) fn candidates(
        &self,
        country: Option<&str>,
        continents: &[String],
    ) -> Vec<Arc<ProxyConn>> {
        let mut list: Vec<Arc<ProxyConn>> = self
            .conns
            .read()
            .iter()
            .filter(|c| c.connected.load(Ordering::Acquire) && !c.draining.load(Ordering::Acquire))
            .cloned()
            .collect();
        list.sort_by_key(|c| c.load.load(Ordering::Relaxed));
        // Proxies at their incoming bandwidth limit last (stable).
        list.sort_by_key(|c| !c.bandwidth.lock().allows_incoming());
        if let Some(country) = country {
            // Stable: within each group the load order stays.
            list.sort_by_key(|c| nearness(c, country, continents));
        }
        list
    }

    /// Remote streams: another proxy able to fetch the stream from the
    /// publisher's and to send more, when the publisher's proxy has used up
    /// its outgoing bandwidth (then the nearest such one), or when one is
    /// nearer to the subscriber (own country before own continent; among
    /// equally near ones the least loaded).
    pub(super) fn remote_for(
        &self,
        publisher: &Arc<ProxyConn>,
        country: Option<&str>,
        continents: &[String],
    ) -> Option<Arc<ProxyConn>> {
        let others = self
            .candidates(country, continents)
            .into_iter()
            .filter(|c| !Arc::ptr_eq(c, publisher))
            .filter(|c| c.features.lock().iter().any(|f| f == "remote-streams"))
            .filter(|c| c.bandwidth.lock().allows_outgoing());
        if !publisher.bandwidth.lock().allows_outgoing() {
            return others.into_iter().next();
        }
        let country = country?;
        let theirs = nearness(publisher, country, continents);
        others
            .into_iter()
            .find(|c| nearness(c, country, continents) < theirs)
    }
}

/// 0: the proxy is in `country`, 1: on one of `continents`, 2: elsewhere.
pub(super) fn nearness(c: &ProxyConn, country: &str, continents: &[String]) -> u8 {
    let theirs = c.country.lock().clone();
    if theirs == country {
        0
    } else if crate::geoip::continents(&theirs)
        .iter()
        .any(|t| continents.iter().any(|c| c == t))
    {
        1
    } else {
        2
    }
}
