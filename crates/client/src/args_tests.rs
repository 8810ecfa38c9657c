//! Tests of the command line parsing.

use super::*;

fn parse_args(args: &[&str]) -> Result<Options, ParseError> {
    parse(std::iter::once("client").chain(args.iter().copied()))
}

fn run(args: &[&str]) -> Options {
    parse_args(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[test]
fn defaults_match_upstream() {
    let o = run(&[]);
    assert_eq!(o.scenario, Scenario::Messages);
    assert_eq!(o.addrs, vec!["localhost:28080"]);
    assert_eq!(o.config, PathBuf::from("server.conf"));
    assert_eq!(o.max_clients, 100);
    assert_eq!(o.effective_duration(), None);
    assert_eq!(o.per_client_rate(), 1000.0);
}

#[test]
fn single_and_double_dash_and_equals() {
    let o = run(&[
        "-addr",
        "a:1,b:2",
        "--maxClients=7",
        "flood",
        "--max-clients",
        "9",
        "-json",
        "--duration=1.5",
        "--server-pid",
        "42",
        "-no_progress",
    ]);
    assert_eq!(o.addrs, vec!["a:1", "b:2"]);
    assert_eq!(o.max_clients, 9);
    assert_eq!(o.scenario, Scenario::Flood);
    assert!(o.json);
    assert_eq!(o.duration, Some(Duration::from_millis(1500)));
    assert_eq!(o.server_pids, vec![42]);
    assert_eq!(o.progress, Some(false));
    assert!(!run(&["-json=false"]).json);
    assert_eq!(run(&["rooms", "-clients", "4"]).scenario, Scenario::Room);
}

#[test]
fn durations_with_units() {
    assert_eq!(parse_secs("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_secs("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_secs("3s"), Ok(Duration::from_secs(3)));
    assert!(parse_secs("-1").is_err());
    assert!(parse_secs("soon").is_err());
}

#[test]
fn rejects_bad_input() {
    assert!(parse_args(&["-maxClients", "1"]).is_err());
    assert!(parse_args(&["-nosuchflag", "1"]).is_err());
    assert!(parse_args(&["dance"]).is_err());
    assert!(parse_args(&["flood", "room"]).is_err());
    assert!(parse_args(&["-addr"]).is_err());
    assert!(parse_args(&["-addr", ","]).is_err());
    assert!(parse_args(&["room", "-room-size", "1"]).is_err());
    assert!(parse_args(&["-rate", "0"]).is_err());
    assert!(parse_args(&["-source-addrs", "255"]).is_err());
    // A single idle session is fine.
    assert!(parse_args(&["idle", "-maxClients", "1"]).is_ok());
}

#[test]
fn help_and_version() {
    use clap::error::ErrorKind;
    for args in [&["--help"][..], &["-h"], &["-help"], &["help"]] {
        match parse_args(args) {
            Err(ParseError::Clap(e)) => assert_eq!(e.kind(), ErrorKind::DisplayHelp),
            other => panic!("{args:?}: {other:?}"),
        }
    }
    for args in [&["--version"][..], &["-V"], &["-version"]] {
        match parse_args(args) {
            Err(ParseError::Clap(e)) => assert_eq!(e.kind(), ErrorKind::DisplayVersion),
            other => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn room_rate_is_spread_over_clients() {
    let o = run(&["room", "-maxClients", "100"]);
    assert_eq!(o.per_client_rate(), DEFAULT_ROOM_RATE / 100.0);
    let o = run(&["room", "-maxClients", "100", "-rate", "5000"]);
    assert_eq!(o.per_client_rate(), 50.0);
}

#[test]
fn batch_flag_and_several_server_pids() {
    let o = run(&["flood", "-batch", "-server-pid", "10,11,12"]);
    assert!(o.batch);
    assert_eq!(o.server_pids, vec![10, 11, 12]);
    let o = run(&["flood", "--batch=false", "--pid=7"]);
    assert!(!o.batch);
    assert_eq!(o.server_pids, vec![7]);
    assert!(parse_args(&["-server-pid", "1,x"]).is_err());
    assert!(parse_args(&["-batch=maybe"]).is_err());
}
