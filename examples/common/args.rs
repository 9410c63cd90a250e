//! The command-line parser of every example and benchmark, on [`lexopt`],
//! with llama.cpp's spelling of flags.
//!
//! llama.cpp's tools spell many flags with one dash and several letters
//! (`-ngl 99`, `-ctk q8_0`, `-cnv`). A getopt-style parser, lexopt included,
//! reads `-ngl` as the short option `-n` with the value `gl` (or as `-n -g
//! -l`). Here a single-dash word is one flag, whole: when lexopt reports the
//! short option `-n`, the rest of the word (`gl`) is taken back at once with
//! `Parser::optional_value` and the flag is `-ngl`. So, as in llama.cpp:
//!
//! - `-n 16` and `-ngl 99` are different flags, each with its value in the
//!   next argument; short flags are never bundled (`-abc` is the flag `-abc`)
//!   and take no glued value (`-n16` is an unknown flag `-n16`);
//! - a value is the next argument even when it starts with a dash (`-ngl -1`,
//!   `-p "-x"`): it is read with `Parser::value`, never parsed as a flag;
//! - `--long value` and `--long=value` both work (lexopt), and so does
//!   `-ngl=99` (lexopt's own `-o=value` handling is off, the `=` is split here);
//! - `--` ends the flags: what follows is positional.
//!
//! Programs match flags as strings with their dashes (`"-ngl" |
//! "--n-gpu-layers"`), read values with [`Args::value`] / [`Args::parse`]
//! (errors name the flag and the value), and end with [`exit_on_error`] (or
//! [`parse_or_exit`]): `-h`/`--help` prints the help text and exits 0; an
//! unknown flag, a missing or malformed value prints `error: ...`, the usage
//! line (the help text's first paragraph) and exits 2.

use std::ffi::OsString;
use std::fmt::Display;
use std::io::Write;
use std::str::FromStr;

/// Why parsing stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArgError {
    /// `-h` or `--help`.
    Help,
    /// A usage error: unknown flag, missing or malformed value.
    Usage(String),
}

impl Display for ArgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArgError::Help => f.write_str("help asked for"),
            ArgError::Usage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ArgError {}

/// A value parser's message, as a usage error (`?` on `Result<_, String>`).
impl From<String> for ArgError {
    fn from(message: String) -> Self {
        ArgError::Usage(message)
    }
}

impl From<&str> for ArgError {
    fn from(message: &str) -> Self {
        ArgError::Usage(message.into())
    }
}

/// A usage error.
pub fn usage(message: impl Into<String>) -> ArgError {
    ArgError::Usage(message.into())
}

pub type ArgResult<T> = Result<T, ArgError>;

/// One command-line item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A flag, with its dashes: `-ngl`, `--model`.
    Flag(String),
    /// A positional argument.
    Value(String),
}

/// The command line being parsed.
pub struct Args {
    parser: lexopt::Parser,
    /// The last flag, for messages.
    flag: String,
    /// The value glued to the last single-dash flag with `=` (`-ngl=99`).
    inline: Option<String>,
}

impl Args {
    /// The process's arguments (the program name skipped).
    pub fn from_env() -> Args {
        Args::new(lexopt::Parser::from_env())
    }

    /// These arguments (no program name first).
    pub fn from_args<I>(args: I) -> Args
    where
        I: IntoIterator,
        I::Item: Into<OsString>,
    {
        Args::new(lexopt::Parser::from_args(args))
    }

    fn new(mut parser: lexopt::Parser) -> Args {
        // `-ngl=99`: the whole word is read back and split at '=' in `next`.
        parser.set_short_equals(false);
        Args { parser, flag: String::new(), inline: None }
    }

    /// The next flag or positional argument; `Err(Help)` for `-h`/`--help`.
    pub fn next(&mut self) -> ArgResult<Option<Arg>> {
        if let Some(v) = self.inline.take() {
            return Err(usage(format!("{} takes no value (got {}={v})", self.flag, self.flag)));
        }
        let flag = match self.parser.next() {
            Ok(None) => return Ok(None),
            Ok(Some(lexopt::Arg::Short(c))) => {
                // The whole single-dash word: `-ngl`, not `-n` with value `gl`.
                let rest = self.parser.optional_value().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default();
                let word = format!("-{c}{rest}");
                match word.split_once('=') {
                    Some((flag, value)) => {
                        self.inline = Some(value.to_string());
                        flag.to_string()
                    }
                    None => word,
                }
            }
            Ok(Some(lexopt::Arg::Long(name))) => format!("--{name}"),
            Ok(Some(lexopt::Arg::Value(v))) => {
                return v.into_string().map(|v| Some(Arg::Value(v))).map_err(|v| usage(format!("{v:?} is not UTF-8")))
            }
            Err(e) => return Err(self.lexopt_error(e)),
        };
        if flag == "-h" || flag == "--help" {
            return Err(ArgError::Help);
        }
        self.flag.clone_from(&flag);
        Ok(Some(Arg::Flag(flag)))
    }

    /// The last flag, as given (`-ngl`).
    pub fn flag(&self) -> &str {
        &self.flag
    }

    /// The last flag's value: the text after its `=`, else the next argument
    /// (even one that starts with a dash).
    pub fn value(&mut self) -> ArgResult<String> {
        if let Some(v) = self.inline.take() {
            return Ok(v);
        }
        match self.parser.value() {
            Ok(v) => v.into_string().map_err(|v| usage(format!("{} {v:?}: not UTF-8", self.flag))),
            Err(lexopt::Error::MissingValue { .. }) => Err(usage(format!("{} needs a value", self.flag))),
            Err(e) => Err(self.lexopt_error(e)),
        }
    }

    /// The last flag's value, parsed with `FromStr`.
    pub fn parse<T: FromStr>(&mut self) -> ArgResult<T>
    where
        T::Err: Display,
    {
        self.parse_with(|s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    /// The last flag's value, parsed by `f` (its error explains why it is wrong).
    pub fn parse_with<T>(&mut self, f: impl FnOnce(&str) -> Result<T, String>) -> ArgResult<T> {
        let v = self.value()?;
        f(&v).map_err(|e| self.bad(&v, e))
    }

    /// A usage error about the last flag's value.
    pub fn bad(&self, value: &str, why: impl Display) -> ArgError {
        usage(format!("{} {value}: {why}", self.flag))
    }

    /// The error for an item the program does not take.
    pub fn unexpected(&self, arg: Arg) -> ArgError {
        match arg {
            Arg::Flag(f) => usage(format!("unknown flag {f}")),
            Arg::Value(v) => usage(format!("unexpected argument {v:?}")),
        }
    }

    fn lexopt_error(&self, e: lexopt::Error) -> ArgError {
        match e {
            lexopt::Error::UnexpectedValue { option, value } => {
                usage(format!("{option} takes no value (got {option}={})", value.to_string_lossy()))
            }
            e => usage(e.to_string()),
        }
    }
}

/// The help text's first paragraph: the usage line(s).
pub fn usage_line(help: &str) -> &str {
    help.split("\n\n").next().unwrap_or(help).trim_end()
}

/// `Ok` as is; for `-h` prints `help` to stdout and exits 0; for a usage
/// error prints it and the usage line to stderr and exits 2.
pub fn exit_on_error<T>(help: &str, result: ArgResult<T>) -> T {
    match result {
        Ok(v) => v,
        Err(ArgError::Help) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", help.trim_end());
            let _ = out.flush();
            std::process::exit(0)
        }
        Err(ArgError::Usage(m)) => {
            eprintln!("error: {m}\n{}\n(-h lists every flag)", usage_line(help));
            std::process::exit(2)
        }
    }
}

/// Parses the process's arguments with `f`, then [`exit_on_error`].
pub fn parse_or_exit<T>(help: &str, f: impl FnOnce(&mut Args) -> ArgResult<T>) -> T {
    exit_on_error(help, f(&mut Args::from_env()))
}

/// The benchmarks' command line: `(flag, value)` pairs read first from the
/// whitespace-separated environment variable `env_name` (its value `env`),
/// then from `cli`; a flag given on the command line replaces every value the
/// environment gave it. `canonical` folds aliases into one name and says
/// whether the flag takes a value (`None`: unknown flag). Values are not
/// interpreted; `-h` in either source comes back as [`ArgError::Help`].
pub fn env_then_cli(
    env_name: &str,
    env: Option<&str>,
    cli: &[String],
    canonical: fn(&str) -> Option<(&'static str, bool)>,
) -> ArgResult<Vec<(&'static str, String)>> {
    let pairs = |tokens: &[String], source: &str| -> ArgResult<Vec<(&'static str, String)>> {
        let in_source = |e: ArgError| match e {
            ArgError::Usage(m) => usage(format!("{m} (in {source})")),
            help => help,
        };
        let mut p = Args::from_args(tokens);
        let mut out = Vec::new();
        while let Some(arg) = p.next().map_err(in_source)? {
            let Arg::Flag(tok) = &arg else { return Err(in_source(p.unexpected(arg))) };
            let (flag, takes_value) =
                canonical(tok).ok_or_else(|| usage(format!("unknown option {tok} in {source}")))?;
            let value = if takes_value { p.value().map_err(in_source)? } else { String::new() };
            out.push((flag, value));
        }
        Ok(out)
    };
    let env_tokens: Vec<String> = env.unwrap_or("").split_whitespace().map(String::from).collect();
    let env_pairs = pairs(&env_tokens, env_name)?;
    let cli_pairs = pairs(cli, "the command line")?;
    let mut all: Vec<(&'static str, String)> =
        env_pairs.into_iter().filter(|(f, _)| !cli_pairs.iter().any(|(c, _)| c == f)).collect();
    all.extend(cli_pairs);
    Ok(all)
}

// Value parsers shared by the programs: `Err` says what is wrong with the value.

/// A number, with the parser's reason when it is not one.
pub fn num<T: FromStr>(s: &str) -> Result<T, String>
where
    T::Err: Display,
{
    s.trim().parse::<T>().map_err(|e| e.to_string())
}

/// A number of at least 1.
pub fn positive(s: &str) -> Result<u32, String> {
    match num::<u32>(s)? {
        0 => Err("must be at least 1".into()),
        n => Ok(n),
    }
}

/// A finite number in `lo..=hi`.
pub fn float_in(s: &str, lo: f32, hi: f32) -> Result<f32, String> {
    let v = num::<f32>(s)?;
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between {lo} and {hi}"))
    }
}

/// `-ngl`: layers on the GPUs; a negative number or `all` means all of them
/// (`None`).
pub fn gpu_layers(s: &str) -> Result<Option<u32>, String> {
    if s == "all" {
        return Ok(None);
    }
    let n = num::<i64>(s).map_err(|e| format!("{e} (expected a number of layers, -1 or all)"))?;
    Ok((n >= 0).then_some(n.min(u32::MAX as i64) as u32))
}

/// `-ts`: the share of the model per GPU, `3,1` or `3/1`; each finite, >= 0.
pub fn tensor_split(s: &str) -> Result<Vec<f32>, String> {
    s.split([',', '/'])
        .map(|x| match x.trim().parse::<f32>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            Ok(_) => Err(format!("{x:?}: each share must be a finite number >= 0")),
            Err(e) => Err(format!("{x:?}: {e}")),
        })
        .collect()
}

/// A comma-separated list of `T`.
pub fn list<T: FromStr>(s: &str) -> Result<Vec<T>, String>
where
    T::Err: Display,
{
    s.split(',').map(|x| x.trim().parse::<T>().map_err(|e| format!("{x:?}: {e}"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every item, values read for the flags in `valued`.
    fn items(argv: &[&str], valued: &[&str]) -> ArgResult<Vec<(String, Option<String>)>> {
        let mut a = Args::from_args(argv.iter().copied());
        let mut out = Vec::new();
        while let Some(arg) = a.next()? {
            match arg {
                Arg::Flag(f) if valued.contains(&f.as_str()) => {
                    let v = a.value()?;
                    out.push((f, Some(v)));
                }
                Arg::Flag(f) => out.push((f, None)),
                Arg::Value(v) => out.push((format!("={v}"), None)),
            }
        }
        Ok(out)
    }

    fn pair(f: &str, v: Option<&str>) -> (String, Option<String>) {
        (f.to_string(), v.map(String::from))
    }

    #[test]
    fn multi_letter_single_dash_flags_stay_whole() {
        let got = items(
            &["-ngl", "99", "-n", "16", "-ctk", "q8_0", "-cnv", "--model", "m.gguf"],
            &["-ngl", "-n", "-ctk", "--model"],
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                pair("-ngl", Some("99")),
                pair("-n", Some("16")),
                pair("-ctk", Some("q8_0")),
                pair("-cnv", None),
                pair("--model", Some("m.gguf")),
            ]
        );
    }

    #[test]
    fn values_may_start_with_a_dash_and_be_glued_with_equals() {
        let got =
            items(&["-ngl", "-1", "-p", "-x y", "--ctx-size=512", "-ngl=7", "--", "-n"], &["-ngl", "-p", "--ctx-size"])
                .unwrap();
        assert_eq!(
            got,
            vec![
                pair("-ngl", Some("-1")),
                pair("-p", Some("-x y")),
                pair("--ctx-size", Some("512")),
                pair("-ngl", Some("7")),
                pair("=-n", None),
            ]
        );
    }

    #[test]
    fn errors() {
        assert_eq!(items(&["-x", "-h"], &[]), Err(ArgError::Help));
        assert_eq!(items(&["--help"], &[]), Err(ArgError::Help));
        assert_eq!(items(&["-n"], &["-n"]), Err(usage("-n needs a value")));
        assert_eq!(items(&["--embeddings=yes"], &[]), Err(usage("--embeddings takes no value (got --embeddings=yes)")));
        assert_eq!(items(&["-cnv=1"], &[]), Err(usage("-cnv takes no value (got -cnv=1)")));
        let mut a = Args::from_args(["-n", "abc"]);
        assert_eq!(a.next(), Ok(Some(Arg::Flag("-n".into()))));
        assert_eq!(a.parse::<u32>(), Err(usage("-n abc: invalid digit found in string")));
        let mut a = Args::from_args(["-bogus"]);
        let arg = a.next().unwrap().unwrap();
        assert_eq!(a.unexpected(arg), usage("unknown flag -bogus"));
    }

    #[test]
    fn value_parsers() {
        assert_eq!(gpu_layers("-1"), Ok(None));
        assert_eq!(gpu_layers("all"), Ok(None));
        assert_eq!(gpu_layers("12"), Ok(Some(12)));
        assert!(gpu_layers("x").is_err());
        assert_eq!(tensor_split("3,1"), Ok(vec![3.0, 1.0]));
        assert_eq!(tensor_split("3/1"), Ok(vec![3.0, 1.0]));
        assert!(tensor_split("3,-1").is_err());
        assert!(positive("0").is_err());
        assert_eq!(list::<u32>("1, 4"), Ok(vec![1, 4]));
        assert!(float_in("1.5", 0.0, 1.0).is_err());
        assert_eq!(usage_line("usage: x [-n N]\n  more\n\nflags:\n  -n N"), "usage: x [-n N]\n  more");
    }
}
