//! The agent protocol's frame decoder on an arbitrary byte stream, pushed in
//! pieces whose sizes the input chooses. Never a panic; the pieces do not
//! change what comes out (the same frames and errors as one push, and as
//! `read_frame` on the whole stream); every decoded frame encodes to bytes
//! that decode back to an equal frame.
//!
//! Input: one byte N, then N % 16 piece sizes (one byte each, used in turn
//! until the stream is consumed; a 0 pushes nothing; none, or only zeros,
//! mean the stream in one piece), then the stream.
#![no_main]
use husk_wire::agent::{read_frame, Decoder, Error, Frame};
use libfuzzer_sys::fuzz_target;

/// What one `next_frame` call gave, errors by their Debug text (the type has
/// no PartialEq; the text carries the kind, seq and serde message).
#[derive(Debug, PartialEq)]
enum Outcome {
    Frame(Frame),
    /// A bad body: the decoder goes on after it.
    Bad(String),
    /// The stream is out of step: nothing more is read from it.
    Fatal(String),
}

/// Drains the complete frames in `d` into `out`; false after a fatal error.
fn drain(d: &mut Decoder, out: &mut Vec<Outcome>) -> bool {
    loop {
        match d.next_frame() {
            Ok(Some(frame)) => out.push(Outcome::Frame(frame)),
            Ok(None) => return true,
            Err(e) if e.is_recoverable() => {
                assert!(matches!(e, Error::Body { .. }), "{e:?}");
                out.push(Outcome::Bad(format!("{e:?}")));
            }
            Err(e) => {
                assert!(!matches!(e, Error::Body { .. }), "{e:?}");
                out.push(Outcome::Fatal(format!("{e:?}")));
                return false;
            }
        }
    }
}

/// The stream's bytes not yet consumed after `outcomes`: the decoder has
/// no public view of its buffer, so this walks the length prefixes.
fn leftover(stream: &[u8], outcomes: &[Outcome]) -> usize {
    let mut rest = stream;
    for _ in outcomes {
        let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        rest = rest.get(4 + len..).unwrap_or(&[]);
    }
    rest.len()
}

fn check_round_trip(frame: &Frame) {
    let bytes = frame.encode();
    let len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    assert_eq!(len, bytes.len() - 4, "{frame:?}");
    let mut d = Decoder::default();
    d.push(&bytes);
    match d.next_frame() {
        Ok(Some(again)) => assert_eq!(&again, frame, "re-encoded as {bytes:?}"),
        other => panic!("{frame:?} re-encoded as {bytes:?} decodes to {other:?}"),
    }
    assert!(
        matches!(d.next_frame(), Ok(None)),
        "{frame:?}: bytes left over"
    );
    match read_frame(&mut &bytes[..]) {
        Ok(Some(again)) => assert_eq!(&again, frame),
        other => panic!("{frame:?}: read_frame gives {other:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (sizes, stream) = rest.split_at(rest.len().min(usize::from(n % 16)));

    let mut whole = Vec::new();
    let mut d = Decoder::default();
    d.push(stream);
    let whole_ok = drain(&mut d, &mut whole);

    let mut pieces = Vec::new();
    let mut d = Decoder::default();
    let mut pieces_ok = true;
    if sizes.iter().all(|&s| s == 0) {
        d.push(stream);
        pieces_ok = drain(&mut d, &mut pieces);
    } else {
        let mut at = 0;
        for &size in sizes.iter().cycle() {
            if !pieces_ok || at == stream.len() {
                break;
            }
            let end = stream.len().min(at + usize::from(size));
            d.push(&stream[at..end]);
            at = end;
            pieces_ok = drain(&mut d, &mut pieces);
        }
    }
    assert_eq!(whole, pieces, "piece sizes {sizes:?}");
    assert_eq!(whole_ok, pieces_ok);

    // The blocking reader agrees up to the end of the stream.
    let mut r = stream;
    let mut read = Vec::new();
    let end = loop {
        match read_frame(&mut r) {
            Ok(Some(frame)) => read.push(Outcome::Frame(frame)),
            Ok(None) => break None,
            Err(e) if e.is_recoverable() => read.push(Outcome::Bad(format!("{e:?}"))),
            Err(Error::Io(e)) => break Some(e),
            Err(e) => {
                read.push(Outcome::Fatal(format!("{e:?}")));
                break None;
            }
        }
    };
    assert_eq!(whole, read);
    if whole_ok {
        // The decoder waits for more; the reader hit the end of the stream.
        match leftover(stream, &whole) {
            0 => assert!(end.is_none(), "clean end read as {end:?}"),
            // A cut length prefix: read_frame calls it a clean end.
            1..=3 => {}
            _ => assert!(
                end.as_ref()
                    .is_some_and(|e| e.kind() == std::io::ErrorKind::UnexpectedEof),
                "cut frame read as {end:?}"
            ),
        }
    }

    for outcome in &whole {
        if let Outcome::Frame(frame) = outcome {
            check_round_trip(frame);
        }
    }
});
