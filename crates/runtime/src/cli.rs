//! What `main` of every binary shares: the command line on `clap` (with the
//! Go server's single-dash flags still accepted, so existing unit files
//! work), logging from the config's `[app] loglevel`, a multi-threaded
//! runtime, exit codes (64 for unusable flags or configuration) and output
//! that does not panic when stdout is a closed pipe (`check | head -3`).
//!
//! Each binary declares its own `clap::Parser` in `main.rs`, flattening
//! [`ConfigArgs`] and using [`CheckArgs`] for its `check` subcommand, and
//! calls [`parse`], then [`serve`] or [`check`].

use clap::{ArgMatches, Parser};
use std::ffi::OsString;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit code when stdout was closed by its reader (what a shell reports
/// for a process ended by SIGPIPE: 128 + 13).
pub const EXIT_BROKEN_PIPE: i32 = 141;

/// The flags every server binary takes. All are global: they may stand
/// before or after a subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Configuration file
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Accepted for the Go server's unit files; ignored (profile with `perf`)
    #[arg(long, value_name = "FILE", global = true, hide = true)]
    pub cpuprofile: Option<OsString>,
    /// Accepted for the Go server's unit files; ignored
    #[arg(long, value_name = "FILE", global = true, hide = true)]
    pub memprofile: Option<OsString>,
}

impl ConfigArgs {
    /// The configuration file: `--config`, or the binary's default (also
    /// filled in by [`parse`]).
    pub fn path(&self) -> PathBuf {
        self.config.clone().unwrap_or_default()
    }

    /// Go's profiling flags are accepted but do nothing here: say so once.
    pub fn warn_ignored(&self) {
        if self.cpuprofile.is_some() || self.memprofile.is_some() {
            tracing::warn!("-cpuprofile / -memprofile are not supported and ignored");
        }
    }
}

/// Flags of the `check` subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Do not try to bind the listen addresses (on a host where the server
    /// already runs; without it, an address held by a running instance of
    /// this server is recognised by its welcome page)
    #[arg(long)]
    pub skip_bind: bool,
}

/// Long option names of a command and its subcommands, with `help` and
/// `version`.
fn long_names(cmd: &clap::Command, out: &mut Vec<String>) {
    for a in cmd.get_arguments() {
        if let Some(l) = a.get_long() {
            out.push(l.to_owned());
        }
        if let Some(aliases) = a.get_all_aliases() {
            out.extend(aliases.iter().map(|s| (*s).to_owned()));
        }
    }
    for s in cmd.get_subcommands() {
        long_names(s, out);
    }
}

/// Go's `flag` package takes `-config X` and `-config=X` for long options:
/// rewrite those to `--config` when the name is one of ours. Arguments
/// after `--` are left alone.
pub fn go_style_args<I: IntoIterator<Item = OsString>>(
    cmd: &clap::Command,
    args: I,
) -> Vec<OsString> {
    let mut names = vec!["help".to_owned(), "version".to_owned()];
    long_names(cmd, &mut names);
    let mut rest = false;
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 || rest {
                return arg;
            }
            let Some(s) = arg.to_str() else {
                return arg;
            };
            if s == "--" {
                rest = true;
                return arg;
            }
            match s.strip_prefix('-') {
                Some(body) if !body.starts_with('-') && body.len() > 1 => {
                    let name = body.split('=').next().unwrap_or_default();
                    if names.iter().any(|n| n == name) {
                        OsString::from(format!("-{s}"))
                    } else {
                        arg
                    }
                }
                _ => arg,
            }
        })
        .collect()
}

/// Parses the process's arguments into `P`, filling `--config`'s default.
/// Help and version go to stdout with exit code 0; a wrong command line is
/// reported on stderr with exit code 64.
pub fn parse<P: Parser>(default_config: &'static str) -> P {
    match try_parse_from::<P, _>(default_config, std::env::args_os()) {
        Ok(p) => p,
        Err(e) => exit_with(e),
    }
}

/// [`parse`] from given arguments (the first is the program name).
pub fn try_parse_from<P: Parser, I: IntoIterator<Item = OsString>>(
    default_config: &'static str,
    args: I,
) -> Result<P, clap::Error> {
    let cmd = P::command();
    let has_config = cmd.get_arguments().any(|a| a.get_id() == "config");
    let cmd = if has_config {
        cmd.mut_arg("config", |a| a.default_value(default_config))
    } else {
        cmd
    };
    let args = go_style_args(&cmd, args);
    let mut cmd = cmd;
    let matches: ArgMatches = cmd.try_get_matches_from_mut(args)?;
    P::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

/// Prints a clap error (or help / version) and exits: 0 for help and
/// version, 64 (`EX_USAGE`) for a command line that cannot be used.
pub fn exit_with(e: clap::Error) -> ! {
    let code = if e.use_stderr() {
        crate::EXIT_CONFIG
    } else {
        0
    };
    if let Err(err) = e.print() {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
    }
    std::process::exit(code);
}

/// Writes one line to stdout. If the reader has gone away (`| head`), exits
/// quietly with [`EXIT_BROKEN_PIPE`] instead of panicking like `println!`.
pub fn print_line(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let res = out
        .write_fmt(line)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = res {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(EXIT_BROKEN_PIPE);
        }
    }
}

/// `println!` that survives a closed stdout: see [`print_line`].
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_line(format_args!($($arg)*))
    };
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("could not start runtime: {e}");
            None
        }
    }
}

/// `NAME check`: runs `check`, which prints its findings on stdout and
/// returns the number of failures (exit code 0 only for none).
pub fn check<C, CFut>(check: C) -> ExitCode
where
    C: FnOnce() -> CFut,
    CFut: Future<Output = usize>,
{
    // Only the findings on stdout; library errors to stderr.
    crate::logging::init("error");
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    let failed = rt.block_on(check());
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Sets up logging from `[app] loglevel` and runs `run(config path)` to
/// completion. A start-up error is printed once, on stderr, with exit code
/// 64.
pub fn serve<F, Fut, E>(name: &str, args: &ConfigArgs, run: F) -> ExitCode
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let config = args.path();
    let level = crate::config::Ini::load(&config)
        .map(|ini| ini.get_string("app", "loglevel", "info"))
        .unwrap_or_else(|_| "info".into());
    crate::logging::init(&level);
    args.warn_ignored();
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(run(config.clone())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let hint = if config.exists() {
                String::new()
            } else {
                format!(" (give the file with --config FILE; `{name} --help` lists the options)")
            };
            let e = e.to_string();
            let shown = config.display().to_string();
            if e.contains(&shown) {
                eprintln!("{name}: {e}{hint}");
            } else {
                eprintln!("{name}: {shown}: {e}{hint}");
            }
            ExitCode::from(crate::EXIT_CONFIG as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[derive(Debug, Parser)]
    #[command(name = "t", version = "1.2.3")]
    struct Cli {
        #[command(flatten)]
        common: ConfigArgs,
        #[command(subcommand)]
        command: Option<Cmd>,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        Check(CheckArgs),
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        try_parse_from("t.conf", args.iter().map(OsString::from))
    }

    #[test]
    fn any_order_and_go_flags() {
        for args in [
            &["t", "check", "--config", "x.conf"][..],
            &["t", "--config", "x.conf", "check"],
            &["t", "-config", "x.conf", "check"],
            &["t", "check", "-config=x.conf"],
            &["t", "-c", "x.conf", "check", "-skip-bind"],
        ] {
            let cli = parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(cli.common.path(), PathBuf::from("x.conf"), "{args:?}");
            assert!(matches!(cli.command, Some(Cmd::Check(_))), "{args:?}");
        }
        let cli = parse(&["t"]).expect("no args");
        assert_eq!(cli.common.path(), PathBuf::from("t.conf"));
        assert!(cli.command.is_none());
        // Go's profiling flags are accepted.
        assert!(parse(&["t", "-cpuprofile", "/tmp/p", "-config", "a"]).is_ok());
    }

    #[test]
    fn help_and_version_are_not_errors() {
        for args in [
            &["t", "-h"][..],
            &["t", "--help"],
            &["t", "-help"],
            &["t", "help"],
        ] {
            let e = parse(args).expect_err("help");
            assert!(!e.use_stderr(), "{args:?}");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{args:?}");
        }
        for args in [&["t", "-V"][..], &["t", "--version"], &["t", "-version"]] {
            let e = parse(args).expect_err("version");
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayVersion, "{args:?}");
        }
        let e = parse(&["t", "--nope"]).expect_err("unknown");
        assert!(e.use_stderr());
    }

    #[test]
    fn go_rewrite_leaves_other_arguments() {
        let cmd = Cli::command();
        let out = go_style_args(
            &cmd,
            ["t", "-c", "-x", "-config", "--", "-config"].map(OsString::from),
        );
        assert_eq!(out, ["t", "-c", "-x", "--config", "--", "-config"]);
    }
}
