//! Derivation of the calibration / evaluation texts from `botchan.txt`,
//! exactly as `shared/assets/README.md` specifies it.

const START: &str = "*** START OF THIS PROJECT GUTENBERG";
const END: &str = "*** END OF THIS PROJECT GUTENBERG";

/// Why `botchan.txt` could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("not UTF-8 text")]
    NotUtf8,
    #[error("no line starting with `{START}`")]
    NoStart,
    #[error("no line starting with `{END}` after the start marker")]
    NoEnd,
    #[error("the text between the Gutenberg markers has no line break before its 60% point")]
    NoCut,
}

/// Splits a Project Gutenberg text into (calibration, evaluation) parts:
///
/// 1. drop CRLF (`\r\n` becomes `\n`);
/// 2. keep the text strictly between the line starting
///    `*** START OF THIS PROJECT GUTENBERG` and the line starting
///    `*** END OF THIS PROJECT GUTENBERG`;
/// 3. strip leading/trailing newlines and end with exactly one `\n`;
/// 4. cut after the last `\n` that lies before 60% of the body's characters
///    (`floor(n * 3 / 5)`, computed in integers so no float rounding can move
///    the cut).
///
/// The two parts concatenate back to the body.
pub fn split_botchan(raw: &[u8]) -> Result<(String, String), SplitError> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| SplitError::NotUtf8)?
        .replace("\r\n", "\n");

    let mut start = None;
    let mut end = None;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if start.is_none() {
            if line.starts_with(START) {
                start = Some(pos + line.len());
            }
        } else if line.starts_with(END) {
            end = Some(pos);
            break;
        }
        pos += line.len();
    }
    let start = start.ok_or(SplitError::NoStart)?;
    let end = end.ok_or(SplitError::NoEnd)?;

    let body = format!("{}\n", text[start..end].trim_matches('\n'));
    let n_chars = body.chars().count();
    let limit_chars = n_chars * 3 / 5;
    let limit = body
        .char_indices()
        .nth(limit_chars)
        .map_or(body.len(), |(i, _)| i);
    let cut = body[..limit].rfind('\n').ok_or(SplitError::NoCut)? + 1;
    let eval = body[cut..].to_string();
    let mut calib = body;
    calib.truncate(cut);
    Ok((calib, eval))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(body: &str) -> String {
        format!(
            "header\r\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\r\n\r\n{body}\r\n\r\n\
             *** END OF THIS PROJECT GUTENBERG EBOOK X ***\r\nlicense\r\n"
        )
    }

    #[test]
    fn cuts_at_last_newline_before_sixty_percent() {
        // body = "aaaa\nbbbb\ncccc\ndddd\n" (20 chars); 60% = 12 chars, the last
        // '\n' before index 12 is at index 9.
        let (calib, eval) = split_botchan(doc("aaaa\r\nbbbb\r\ncccc\r\ndddd").as_bytes()).unwrap();
        assert_eq!(calib, "aaaa\nbbbb\n");
        assert_eq!(eval, "cccc\ndddd\n");
    }

    #[test]
    fn counts_characters_not_bytes() {
        // 'é' is two bytes. body = "éé\néé\néé\n" is 9 chars, 12 bytes;
        // 60% = char 5 (byte 8) → cut after the '\n' at char 2.
        let (calib, eval) = split_botchan(doc("éé\néé\néé").as_bytes()).unwrap();
        assert_eq!(calib, "éé\n");
        assert_eq!(eval, "éé\néé\n");
    }

    #[test]
    fn rejects_texts_without_markers() {
        assert_eq!(split_botchan(b"plain text\n"), Err(SplitError::NoStart));
        assert_eq!(
            split_botchan(b"*** START OF THIS PROJECT GUTENBERG X\nabc\n"),
            Err(SplitError::NoEnd)
        );
        assert_eq!(split_botchan(&[0xff, 0xfe]), Err(SplitError::NotUtf8));
        assert_eq!(
            split_botchan(doc("one line").as_bytes()),
            Err(SplitError::NoCut)
        );
    }
}
