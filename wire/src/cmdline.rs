//! What the guest init takes from the kernel command line, and how a host
//! writes it.
//!
//! The command to run comes, in order of preference, from
//! - `husk.cmd=<base64 of the NUL-separated argv>`: what a VMM passes, because
//!   it survives any byte in the arguments (quotes, spaces, `--`);
//! - the words after a standalone `--`, split the way the kernel splits its
//!   command line (whitespace, double quotes group): what a human types;
//! - nothing: an interactive shell on the console.
//!
//! We parse `/proc/cmdline` ourselves instead of trusting `argv` because the
//! kernel also hands init every bare word it does not recognise before `--`.

use base64::Engine;

/// The command line every husk guest starts from: the serial console, reset
/// through the i8042 (`reboot=k`: there is no ACPI), a panic resets at once,
/// `quiet` (under nested KVM each console line costs an exit per byte), and
/// no probing of the i8042's absent AUX port and PnP (each probe is exits).
pub const BASE: &str =
    "console=ttyS0 reboot=k panic=1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";

/// `husk.cmd=`: the command, encoded by [`encode_command`].
pub const KEY_CMD: &str = "husk.cmd";
/// `husk.hostname=`.
pub const KEY_HOSTNAME: &str = "husk.hostname";
/// `husk.status=console`.
pub const KEY_STATUS: &str = "husk.status";
/// `husk.agent`: serve the agent protocol instead of running a command.
pub const KEY_AGENT: &str = "husk.agent";
/// `husk.fault=`: a failure the guest makes on purpose, for the tests of
/// how the host copes (`HUSK_FAULT` on the host asks for it).
pub const KEY_FAULT: &str = "husk.fault";

/// The faults `husk.fault=` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The agent (the guest's PID 1) panics when asked to start a
    /// container: the guest kernel then panics ("Attempted to kill init")
    /// and resets, as when the agent crashes.
    AgentPanic,
}

impl Fault {
    pub const ALL: [Fault; 1] = [Fault::AgentPanic];

    pub fn name(self) -> &'static str {
        match self {
            Fault::AgentPanic => "agent-panic",
        }
    }

    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// The `husk.cmd=` parameter for an argv.
pub fn command_param<S: AsRef<str>>(argv: &[S]) -> String {
    format!("{KEY_CMD}={}", encode_command(argv))
}

/// Settings read from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The command and its arguments; `None` means an interactive shell.
    pub command: Option<Vec<String>>,
    /// `husk.hostname=`; defaults to `husk`.
    pub hostname: String,
    /// `husk.status=console`: also print the exit status line on the console,
    /// for VMMs that cannot read the status port (QEMU in the tests).
    pub status_on_console: bool,
    /// `husk.agent`: serve the host over vsock (the agent protocol) instead
    /// of running a command.
    pub agent: bool,
    /// `husk.fault=`: a known fault to make (an unknown name is none).
    pub fault: Option<Fault>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `husk.cmd=` was not valid base64 or not UTF-8.
    BadEncodedCommand(String),
    /// `husk.cmd=` decoded to an empty argv.
    EmptyCommand,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::BadEncodedCommand(why) => write!(f, "husk.cmd is not valid: {why}"),
            Error::EmptyCommand => write!(f, "husk.cmd holds no command"),
        }
    }
}

/// Splits a kernel command line into words: whitespace separates, a double
/// quote toggles quoting and is itself dropped (as the kernel's `next_arg`).
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Encodes an argv the way `husk.cmd=` expects it (used by hosts and tests).
/// Arguments cannot contain NUL (no exec argument can).
pub fn encode_command<S: AsRef<str>>(argv: &[S]) -> String {
    let joined = argv
        .iter()
        .map(|a| a.as_ref())
        .collect::<Vec<_>>()
        .join("\0");
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(joined)
}

fn decode_command(value: &str) -> Result<Vec<String>, Error> {
    // Accept padded and unpadded input: hosts differ.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| Error::BadEncodedCommand(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::BadEncodedCommand(e.to_string()))?;
    if text.is_empty() {
        return Err(Error::EmptyCommand);
    }
    Ok(text.split('\0').map(str::to_owned).collect())
}

/// Parses the whole kernel command line.
pub fn parse(line: &str) -> Result<Config, Error> {
    let words = split_words(line);
    let (params, after_dashes) = match words.iter().position(|w| w == "--") {
        Some(i) => (&words[..i], Some(&words[i + 1..])),
        None => (&words[..], None),
    };
    let mut config = Config {
        command: None,
        hostname: "husk".to_owned(),
        status_on_console: false,
        agent: false,
        fault: None,
    };
    let mut encoded = None;
    for p in params {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p.as_str(), None),
        };
        match (key, value) {
            (KEY_CMD, Some(v)) => encoded = Some(v),
            (KEY_HOSTNAME, Some(v)) if !v.is_empty() => config.hostname = v.to_owned(),
            (KEY_STATUS, Some(v)) => config.status_on_console = v == "console",
            (KEY_AGENT, None | Some("1")) => config.agent = true,
            (KEY_FAULT, Some(v)) => config.fault = Fault::from_name(v),
            _ => {}
        }
    }
    config.command = match (encoded, after_dashes) {
        (Some(v), _) => Some(decode_command(v)?),
        (None, Some(rest)) if !rest.is_empty() => Some(rest.to_vec()),
        _ => None,
    };
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_follow_kernel_quoting() {
        assert_eq!(
            split_words(r#"a  b="c d" "e f"g  "#),
            vec!["a", "b=c d", "e fg"]
        );
        assert_eq!(split_words(r#"x "" y"#), vec!["x", "", "y"]);
    }

    #[test]
    fn command_after_dashes() {
        let c = parse(r#"console=ttyS0 quiet -- sh -c "echo hi; exit 42""#).unwrap();
        assert_eq!(
            c.command,
            Some(vec!["sh".into(), "-c".into(), "echo hi; exit 42".into()])
        );
        assert_eq!(c.hostname, "husk");
        assert!(!c.status_on_console);
    }

    #[test]
    fn encoded_command_wins_and_keeps_any_byte() {
        let argv = ["printf", "%s\\n", "a \"quoted\" -- word", ""];
        let line = format!(
            "{} husk.hostname=box husk.status=console -- ignored",
            command_param(&argv)
        );
        let c = parse(&line).unwrap();
        assert_eq!(c.command.unwrap(), argv);
        assert_eq!(c.hostname, "box");
        assert!(c.status_on_console);
    }

    #[test]
    fn agent_mode_is_a_flag() {
        assert!(parse("console=ttyS0 husk.agent").unwrap().agent);
        assert!(parse("husk.agent=1 quiet").unwrap().agent);
        assert!(!parse("husk.agent=0").unwrap().agent);
        assert!(!parse("-- husk.agent").unwrap().agent);
    }

    #[test]
    fn a_fault_is_known_by_name_or_is_none() {
        assert_eq!(
            parse("husk.agent husk.fault=agent-panic").unwrap().fault,
            Some(Fault::AgentPanic)
        );
        assert_eq!(parse("husk.fault=nonsense").unwrap().fault, None);
        assert_eq!(parse("husk.agent").unwrap().fault, None);
        for f in Fault::ALL {
            assert_eq!(Fault::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn padded_base64_is_accepted() {
        let padded = base64::engine::general_purpose::STANDARD.encode("ab");
        assert!(padded.ends_with('='));
        let c = parse(&format!("husk.cmd={padded}")).unwrap();
        assert_eq!(c.command.unwrap(), vec!["ab"]);
    }

    #[test]
    fn no_command_means_shell() {
        assert_eq!(parse("root=/dev/vda rw").unwrap().command, None);
        assert_eq!(parse("root=/dev/vda --").unwrap().command, None);
    }

    #[test]
    fn bad_encoded_command_is_an_error() {
        assert!(matches!(
            parse("husk.cmd=!!!"),
            Err(Error::BadEncodedCommand(_))
        ));
        assert_eq!(parse("husk.cmd="), Err(Error::EmptyCommand));
    }

    /// Random command lines (quotes, dashes, husk.* keys, bytes outside
    /// ASCII): parse never panics, and an encoded argv always round-trips.
    #[test]
    fn random_lines_never_panic_and_encoding_round_trips() {
        let pieces = [
            "\"",
            " ",
            "--",
            "husk.cmd=",
            "husk.hostname=",
            "husk.status=console",
            "=",
            "a",
            "é",
            "\t",
            "root=/dev/vda",
            "QUJD",
            "!!",
            "\0",
        ];
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5000 {
            let n = rand() % 12;
            let line: String = (0..n)
                .map(|_| pieces[(rand() % pieces.len() as u64) as usize])
                .collect();
            let _ = parse(&line);
            // An exec argument cannot hold a NUL, so argv pieces skip it.
            let arg_pieces = &pieces[..pieces.len() - 1];
            let argv: Vec<String> = (0..1 + rand() % 4)
                .map(|_| {
                    arg_pieces[(rand() % arg_pieces.len() as u64) as usize]
                        .repeat(1 + (rand() % 3) as usize)
                })
                .collect();
            let c = parse(&format!("quiet husk.cmd={} -- x", encode_command(&argv))).unwrap();
            assert_eq!(c.command.unwrap(), argv);
        }
    }
}
