//! Where a client is, for placing its publishers on a nearby MCU proxy:
//! `[geoip-overrides]` (address or network -> country) first, then a local
//! MaxMind database (`[geoip] url = file:///path/GeoLite2-Country.mmdb`);
//! countries map to continents, and `[continent-overrides]` lets a
//! continent use another one's proxies (e.g. `AF = EU`).

use runtime::config::Ini;
use runtime::net::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use tracing::{info, warn};

/// ISO 3166 alpha-2 codes per continent (the continent codes MaxMind uses).
/// A few countries span two continents and are listed in both.
const CONTINENTS: &[(&str, &str)] = &[
    (
        "AF",
        "AO BF BI BJ BW CD CF CG CI CM CV DJ DZ EG EH ER ET GA GH GM GN GQ GW KE KM LR LS LY \
         MA MG ML MR MU MW MZ NA NE NG RE RW SC SD SH SL SN SO SS ST SZ TD TG TN TZ UG YT ZA ZM ZW",
    ),
    ("AN", "AQ BV GS HM TF"),
    (
        "AS",
        "AE AF AM AZ BD BH BN BT CC CN CX CY GE HK ID IL IN IO IQ IR JO JP KG KH KP KR KW KZ \
         LA LB LK MM MN MO MV MY NP OM PH PK PS QA RU SA SG SY TH TJ TL TM TR TW UZ VN YE",
    ),
    (
        "EU",
        "AD AL AM AT AX AZ BA BE BG BY CH CY CZ DE DK EE ES FI FO FR GB GE GG GI GR HR HU IE IM \
         IS IT JE KZ LI LT LU LV MC MD ME MK MT NL NO PL PT RO RS RU SE SI SJ SK SM TR UA VA XK",
    ),
    (
        "NA",
        "AG AI AW BB BL BM BQ BS BZ CA CR CU CW DM DO GD GL GP GT HN HT JM KN KY LC MF MQ MS MX \
         NI PA PM PR SV SX TC TT UM US VC VG VI",
    ),
    (
        "OC",
        "AS AU CK FJ FM GU KI MH MP NC NF NR NU NZ PF PG PN PW SB TK TO TV UM VU WF WS",
    ),
    ("SA", "AR BO BR CL CO EC FK GF GY PE PY SR UY VE"),
];

/// The continents of `country` (upper-case ISO code); empty if unknown.
pub fn continents(country: &str) -> Vec<&'static str> {
    CONTINENTS
        .iter()
        .filter(|(_, list)| list.split_ascii_whitespace().any(|c| c == country))
        .map(|(continent, _)| *continent)
        .collect()
}

/// A two-letter upper-case code.
pub fn is_valid_country(country: &str) -> bool {
    country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase())
}

#[derive(Debug, thiserror::Error)]
pub enum GeoIpError {
    #[error("[geoip-overrides] {0}")]
    Override(String),
    #[error("[continent-overrides] {0}")]
    Continent(String),
    #[error("[geoip] url: {0}")]
    Database(String),
}

/// Lookups and continent rules.
#[derive(Default)]
pub struct GeoIp {
    overrides: Vec<(IpNet, String)>,
    continent_overrides: HashMap<String, Vec<String>>,
    db: Option<maxminddb::Reader<Vec<u8>>>,
}

impl std::fmt::Debug for GeoIp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoIp")
            .field("overrides", &self.overrides.len())
            .field("db", &self.db.is_some())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<IsoCode<'a>>,
    #[serde(borrow)]
    registered_country: Option<IsoCode<'a>>,
}

#[derive(serde::Deserialize)]
struct IsoCode<'a> {
    iso_code: Option<&'a str>,
}

impl GeoIp {
    pub fn from_config(ini: &Ini) -> Result<GeoIp, GeoIpError> {
        let mut overrides = Vec::new();
        for (net, country) in ini.keys("geoip-overrides") {
            let parsed = IpNet::parse(net).ok_or_else(|| {
                GeoIpError::Override(format!("{net:?} is not an address or network"))
            })?;
            let country = country.trim().to_uppercase();
            if !is_valid_country(&country) {
                return Err(GeoIpError::Override(format!(
                    "{country:?} is not a country code"
                )));
            }
            overrides.push((parsed, country));
        }
        let mut continent_overrides = HashMap::new();
        for (from, to) in ini.keys("continent-overrides") {
            let to: Vec<String> = to
                .split(',')
                .map(|c| c.trim().to_uppercase())
                .filter(|c| !c.is_empty())
                .collect();
            continent_overrides.insert(from.trim().to_uppercase(), to);
        }
        let url = ini.get_string("geoip", "url", "");
        let db = if url.is_empty() {
            if !ini.get_string("geoip", "license", "").is_empty() {
                warn!("[geoip] license: downloading the MaxMind database is not supported; \
                       fetch it with geoipupdate and set [geoip] url = file:///path/to/GeoLite2-Country.mmdb");
            }
            None
        } else {
            let path = url.strip_prefix("file://").unwrap_or(&url);
            if path.starts_with("http://") || path.starts_with("https://") {
                return Err(GeoIpError::Database(format!(
                    "{url:?}: only local files (file://...) are supported"
                )));
            }
            let reader = maxminddb::Reader::open_readfile(path)
                .map_err(|e| GeoIpError::Database(format!("{path}: {e}")))?;
            info!(path, "GeoIP database loaded");
            Some(reader)
        };
        Ok(GeoIp {
            overrides,
            continent_overrides,
            db,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.db.is_some() || !self.overrides.is_empty()
    }

    /// The country of `ip`, if known.
    pub fn lookup(&self, ip: IpAddr) -> Option<String> {
        let ip = runtime::net::canonical(ip);
        if let Some((_, c)) = self.overrides.iter().find(|(net, _)| net.contains(ip)) {
            return Some(c.clone());
        }
        let db = self.db.as_ref()?;
        let found = db.lookup(ip).ok()?;
        let record: CountryRecord = found.decode().ok()??;
        record
            .country
            .or(record.registered_country)?
            .iso_code
            .map(str::to_uppercase)
    }

    /// The continents a client in `country` should use, overrides applied.
    pub fn client_continents(&self, country: &str) -> Vec<String> {
        let mut out: Vec<String> = continents(country).iter().map(|c| c.to_string()).collect();
        let mapped: Vec<String> = out
            .iter()
            .flat_map(|c| self.continent_overrides.get(c).cloned().unwrap_or_default())
            .collect();
        out.extend(mapped);
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn countries_map_to_continents() {
        assert_eq!(continents("DE"), vec!["EU"]);
        assert_eq!(continents("US"), vec!["NA"]);
        assert_eq!(continents("BR"), vec!["SA"]);
        assert_eq!(continents("ZA"), vec!["AF"]);
        assert_eq!(continents("AU"), vec!["OC"]);
        assert_eq!(continents("JP"), vec!["AS"]);
        assert_eq!(continents("RU"), vec!["AS", "EU"]);
        assert!(continents("XX").is_empty());
        // Every code is two upper-case letters and listed once per continent.
        for (_, list) in CONTINENTS {
            let codes: Vec<&str> = list.split_ascii_whitespace().collect();
            assert!(codes.iter().all(|c| is_valid_country(c)), "{list}");
            let mut sorted = codes.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), codes.len(), "duplicate in {list}");
        }
    }

    #[test]
    fn reads_a_maxmind_database() {
        let dir = testkit::TempDir::new("geoip").unwrap();
        let path = dir.join("test.mmdb");
        std::fs::write(
            &path,
            testkit::mmdb::country_db(&[("127.0.0.0", 8, "NZ"), ("10.1.0.0", 16, "BR")]),
        )
        .unwrap();
        let ini = Ini::parse(&format!(
            "[geoip]\nurl = file://{}\n[geoip-overrides]\n127.0.0.2 = DE\n",
            path.display()
        ))
        .unwrap();
        let g = GeoIp::from_config(&ini).unwrap();
        assert_eq!(
            g.lookup("127.0.0.1".parse().unwrap()).as_deref(),
            Some("NZ")
        );
        assert_eq!(
            g.lookup("10.1.200.3".parse().unwrap()).as_deref(),
            Some("BR")
        );
        assert_eq!(g.lookup("10.2.0.1".parse().unwrap()), None);
        // Overrides win over the database.
        assert_eq!(
            g.lookup("127.0.0.2".parse().unwrap()).as_deref(),
            Some("DE")
        );
        // A file that is no database is a start-up error.
        std::fs::write(&path, b"not a database").unwrap();
        assert!(GeoIp::from_config(&ini).is_err());
    }

    #[test]
    fn overrides_come_first() {
        let ini = Ini::parse(
            "[geoip-overrides]\n127.0.0.1 = de\n10.0.0.0/8 = US\n[continent-overrides]\nAF = EU\n",
        )
        .unwrap();
        let g = GeoIp::from_config(&ini).unwrap();
        assert_eq!(
            g.lookup("127.0.0.1".parse().unwrap()).as_deref(),
            Some("DE")
        );
        assert_eq!(g.lookup("10.2.3.4".parse().unwrap()).as_deref(), Some("US"));
        assert_eq!(g.lookup("8.8.8.8".parse().unwrap()), None);
        assert_eq!(g.client_continents("ZA"), vec!["AF", "EU"]);
        assert!(GeoIp::from_config(&Ini::parse("[geoip-overrides]\nfoo = DE\n").unwrap()).is_err());
        assert!(
            GeoIp::from_config(&Ini::parse("[geoip-overrides]\n1.2.3.4 = Germany\n").unwrap())
                .is_err()
        );
        assert!(GeoIp::from_config(
            &Ini::parse("[geoip]\nurl = https://example.invalid/db\n").unwrap()
        )
        .is_err());
    }
}
