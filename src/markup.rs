//! The message format: a safe subset of Markdown, parsed into a tree that the page renders as
//! DOM nodes (on the server as HTML, in the browser as elements), never as an HTML string, so
//! raw HTML in a message stays text.
//!
//! Blocks: paragraphs (line breaks kept), fenced code (```), quotes (`> `), lists (`- `, `* `,
//! `1. `). Inline: `**bold**`, `*italic*` or `_italic_`, `~~strike~~`, `` `code` ``, links for
//! `http://` and `https://` addresses (no other scheme is ever a link), and `@username`
//! mentions. Parsing is linear in the text: delimiters are paired in order of appearance, one
//! pass per kind, never by searching ahead from each, so no input can make it slow.

/// A block of a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Block {
    Paragraph(Vec<Span>),
    /// A fenced code block: its text as it is, whitespace kept.
    Code(String),
    Quote(Vec<Span>),
    List {
        ordered: bool,
        items: Vec<Vec<Span>>,
    },
}

/// A run of text with one look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Span {
    pub text: String,
    pub bold: bool,
    pub italic: bool,
    pub strike: bool,
    pub kind: SpanKind,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpanKind {
    #[default]
    Text,
    Code,
    /// An `http(s)` address; `text` is the address.
    Link,
    /// `@username`; `text` is the whole mention, the username lower-cased after it.
    Mention(String),
}

/// Most blocks a message is split into; the rest stays in the last one.
const MAX_BLOCKS: usize = 200;

/// Parses a message into blocks.
pub fn parse(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().peekable();
    let mut para: Vec<&str> = Vec::new();
    let flush = |para: &mut Vec<&str>, blocks: &mut Vec<Block>| {
        if !para.is_empty() {
            blocks.push(Block::Paragraph(inline(&para.join("\n"))));
            para.clear();
        }
    };
    while let Some(line) = lines.next() {
        if blocks.len() >= MAX_BLOCKS {
            para.push(line);
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") {
            flush(&mut para, &mut blocks);
            // Until the closing fence, or the end of the message for one left open.
            let mut code = Vec::new();
            for l in lines.by_ref() {
                if l.trim_start().starts_with("```") {
                    break;
                }
                code.push(l);
            }
            blocks.push(Block::Code(code.join("\n")));
        } else if let Some(rest) = quote_line(line) {
            flush(&mut para, &mut blocks);
            let mut quote = vec![rest];
            while let Some(rest) = lines.peek().and_then(|l| quote_line(l)) {
                quote.push(rest);
                lines.next();
            }
            blocks.push(Block::Quote(inline(&quote.join("\n"))));
        } else if let Some((ordered, rest)) = list_item(line) {
            flush(&mut para, &mut blocks);
            let mut items = vec![inline(rest)];
            while let Some((o, rest)) = lines.peek().and_then(|l| list_item(l)) {
                if o != ordered {
                    break;
                }
                items.push(inline(rest));
                lines.next();
            }
            blocks.push(Block::List { ordered, items });
        } else if line.trim().is_empty() {
            flush(&mut para, &mut blocks);
        } else {
            para.push(line);
        }
    }
    flush(&mut para, &mut blocks);
    blocks
}

fn quote_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    t.strip_prefix("> ").or_else(|| (t == ">").then_some(""))
}

fn list_item(line: &str) -> Option<(bool, &str)> {
    let t = line.trim_start();
    if let Some(rest) = t.strip_prefix("- ").or_else(|| t.strip_prefix("* ")) {
        return Some((false, rest));
    }
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    if (1..=3).contains(&digits) {
        if let Some(rest) = t[digits..].strip_prefix(". ") {
            return Some((true, rest));
        }
    }
    None
}

/// A piece of a line before styles are applied.
#[derive(Debug)]
enum Token<'a> {
    Text(&'a str),
    Code(&'a str),
    Link(&'a str),
    Mention(&'a str),
    /// A style delimiter: which style, and whether it may open or close there.
    Mark {
        style: Style,
        open: bool,
        close: bool,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Bold,
    Italic,
    Underscore,
    Strike,
}

/// Parses the inline marks of one block's text.
pub fn inline(text: &str) -> Vec<Span> {
    let tokens = tokenize(text);
    // Pair the delimiters of each style in order: an opener with the next closer. What stays
    // unpaired is text.
    let mut paired = vec![false; tokens.len()];
    for style in [Style::Bold, Style::Italic, Style::Underscore, Style::Strike] {
        let mut open: Option<usize> = None;
        for (i, t) in tokens.iter().enumerate() {
            if let Token::Mark {
                style: s,
                open: o,
                close: c,
            } = t
            {
                if *s != style {
                    continue;
                }
                match open {
                    // A pair with nothing between (`****`) is not a style: the marks stay text.
                    Some(at) if *c && i > at + 1 => {
                        paired[at] = true;
                        paired[i] = true;
                        open = None;
                    }
                    _ if *o => open = Some(i),
                    _ => {}
                }
            }
        }
    }
    let mut spans: Vec<Span> = Vec::new();
    let (mut bold, mut italic, mut strike) = (false, false, false);
    let push = |spans: &mut Vec<Span>, text: &str, kind: SpanKind, b: bool, i: bool, s: bool| {
        if text.is_empty() {
            return;
        }
        match spans.last_mut() {
            Some(last)
                if kind == SpanKind::Text
                    && last.kind == SpanKind::Text
                    && (last.bold, last.italic, last.strike) == (b, i, s) =>
            {
                last.text.push_str(text);
            }
            _ => spans.push(Span {
                text: text.to_owned(),
                bold: b,
                italic: i,
                strike: s,
                kind,
            }),
        }
    };
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Text(s) => push(&mut spans, s, SpanKind::Text, bold, italic, strike),
            Token::Code(s) => push(&mut spans, s, SpanKind::Code, bold, italic, strike),
            Token::Link(s) => push(&mut spans, s, SpanKind::Link, bold, italic, strike),
            Token::Mention(s) => {
                let name = s[1..].to_ascii_lowercase();
                push(&mut spans, s, SpanKind::Mention(name), bold, italic, strike)
            }
            Token::Mark { style, .. } if paired[i] => match style {
                Style::Bold => bold = !bold,
                Style::Italic | Style::Underscore => italic = !italic,
                Style::Strike => strike = !strike,
            },
            Token::Mark { style, .. } => {
                let text = match style {
                    Style::Bold => "**",
                    Style::Italic => "*",
                    Style::Underscore => "_",
                    Style::Strike => "~~",
                };
                push(&mut spans, text, SpanKind::Text, bold, italic, strike)
            }
        }
    }
    spans
}

/// A text without its marks, as a one-line quote shows it.
pub fn plain(text: &str) -> String {
    inline(text).into_iter().map(|s| s.text).collect()
}

/// The `@name` being typed at the end of `text`: where its `@` is, and what follows it. `None`
/// when the text does not end in one (an `@` inside a word, as in an e-mail address, starts
/// none).
pub fn mention_at_end(text: &str) -> Option<(usize, &str)> {
    let at = text.rfind('@')?;
    let typed = &text[at + 1..];
    let handle = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if typed.len() > 32 || !typed.chars().all(handle) {
        return None;
    }
    if text[..at]
        .chars()
        .next_back()
        .is_some_and(|c| handle(c) || c == '@')
    {
        return None;
    }
    Some((at, typed))
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric()
}

/// Splits a text into plain runs, code spans, links, mentions and style delimiters.
fn tokenize<'a>(text: &'a str) -> Vec<Token<'a>> {
    let mut tokens = Vec::new();
    let mut plain = 0; // start of the current plain run
    let mut i = 0;
    let bytes = text.as_bytes();
    let before = |at: usize| text[..at].chars().next_back();
    let after = |at: usize| text[at..].chars().next();
    while i < bytes.len() {
        let b = bytes[i];
        let flush = |tokens: &mut Vec<Token<'a>>, plain: usize, i: usize| {
            if plain < i {
                tokens.push(Token::Text(&text[plain..i]));
            }
        };
        if b == b'`' {
            if let Some(len) = text[i + 1..].find('`') {
                flush(&mut tokens, plain, i);
                tokens.push(Token::Code(&text[i + 1..i + 1 + len]));
                i += len + 2;
                plain = i;
                continue;
            }
        } else if (b == b'h')
            && (text[i..].starts_with("https://") || text[i..].starts_with("http://"))
            && before(i).is_none_or(|c| !is_word(c))
        {
            let end = text[i..]
                .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
                .map_or(text.len(), |n| i + n);
            // Punctuation at the end belongs to the sentence; a closing bracket only if the
            // address has no opening one.
            let mut url = &text[i..end];
            loop {
                let trimmed =
                    url.trim_end_matches(['.', ',', ':', ';', '!', '?', '\'', '*', '_', '~']);
                let trimmed = if trimmed.ends_with(')') && !trimmed.contains('(') {
                    &trimmed[..trimmed.len() - 1]
                } else {
                    trimmed
                };
                if trimmed.len() == url.len() {
                    break;
                }
                url = trimmed;
            }
            if url.len() > "https://".len() {
                flush(&mut tokens, plain, i);
                tokens.push(Token::Link(url));
                i += url.len();
                plain = i;
                continue;
            }
        } else if b == b'@' && before(i).is_none_or(|c| !is_word(c) && c != '.') {
            let len = text[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
                .count();
            let name = text[i + 1..i + 1 + len].trim_end_matches(['.', '-']);
            if (3..=32).contains(&name.len()) {
                flush(&mut tokens, plain, i);
                tokens.push(Token::Mention(&text[i..i + 1 + name.len()]));
                i += 1 + name.len();
                plain = i;
                continue;
            }
        } else if matches!(b, b'*' | b'_' | b'~') {
            let run = bytes[i..].iter().take_while(|x| **x == b).count();
            let (style, len) = match (b, run) {
                (b'*', n) if n >= 2 => (Style::Bold, 2),
                (b'*', _) => (Style::Italic, 1),
                (b'_', _) => (Style::Underscore, 1),
                (b'~', n) if n >= 2 => (Style::Strike, 2),
                _ => {
                    i += 1;
                    continue;
                }
            };
            let prev = before(i);
            let next = after(i + len);
            let mut open = next.is_some_and(|c| !c.is_whitespace());
            let mut close = prev.is_some_and(|c| !c.is_whitespace());
            if style == Style::Underscore {
                // snake_case words keep their underscores.
                open &= prev.is_none_or(|c| !is_word(c));
                close &= next.is_none_or(|c| !is_word(c));
            }
            if open || close {
                flush(&mut tokens, plain, i);
                tokens.push(Token::Mark { style, open, close });
                i += len;
                plain = i;
                continue;
            }
            i += len;
            continue;
        }
        i += text[i..].chars().next().map_or(1, char::len_utf8);
    }
    if plain < text.len() {
        tokens.push(Token::Text(&text[plain..]));
    }
    tokens
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_being_typed_is_found() {
        assert_eq!(mention_at_end("hi @an"), Some((3, "an")));
        assert_eq!(mention_at_end("@"), Some((0, "")));
        assert_eq!(mention_at_end("hi @an and"), None, "past the name");
        assert_eq!(mention_at_end("mail ann@example"), None, "inside a word");
        assert_eq!(mention_at_end("no at sign"), None);
        assert_eq!(mention_at_end("@ann.b"), Some((0, "ann.b")));
        assert_eq!(mention_at_end("ü @a"), Some((3, "a")), "byte offsets");
        assert_eq!(mention_at_end("@@a"), None);
    }

    fn plain(s: &str) -> Span {
        Span {
            text: s.into(),
            ..Default::default()
        }
    }

    fn flat(blocks: &[Block]) -> String {
        blocks
            .iter()
            .map(|b| match b {
                Block::Paragraph(s) | Block::Quote(s) => {
                    s.iter().map(|x| x.text.as_str()).collect::<String>()
                }
                Block::Code(c) => c.clone(),
                Block::List { items, .. } => items
                    .iter()
                    .map(|s| s.iter().map(|x| x.text.as_str()).collect::<String>())
                    .collect::<Vec<_>>()
                    .join("|"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn styles_pair_up_and_stray_marks_stay_text() {
        let s = inline("a **bold** and *it* and ~~gone~~ and `co*de*`");
        let bold: Vec<&str> = s
            .iter()
            .filter(|x| x.bold)
            .map(|x| x.text.as_str())
            .collect();
        assert_eq!(bold, vec!["bold"]);
        assert!(s.iter().any(|x| x.italic && x.text == "it"));
        assert!(s.iter().any(|x| x.strike && x.text == "gone"));
        assert!(s
            .iter()
            .any(|x| x.kind == SpanKind::Code && x.text == "co*de*"));
        assert_eq!(inline("2 * 3 * 4"), vec![plain("2 * 3 * 4")]);
        assert_eq!(inline("a **b"), vec![plain("a **b")]);
        assert_eq!(inline("snake_case_name"), vec![plain("snake_case_name")]);
        assert!(inline("_yes_")[0].italic);
    }

    #[test]
    fn only_http_addresses_are_links() {
        let s = inline("see https://example.com/a_(b). or javascript:alert(1) or data:x");
        let links: Vec<&str> = s
            .iter()
            .filter(|x| x.kind == SpanKind::Link)
            .map(|x| x.text.as_str())
            .collect();
        assert_eq!(links, vec!["https://example.com/a_(b)"]);
        assert!(inline("[x](javascript:alert(1))")
            .iter()
            .all(|x| x.kind != SpanKind::Link));
        assert_eq!(
            inline("(https://example.com/x)")[1].text,
            "https://example.com/x"
        );
    }

    #[test]
    fn mentions_are_handles() {
        let s = inline("hi @Ann and mail@example.com");
        let m: Vec<&SpanKind> = s.iter().map(|x| &x.kind).collect();
        assert!(m.contains(&&SpanKind::Mention("ann".into())));
        assert_eq!(
            s.iter()
                .filter(|x| matches!(x.kind, SpanKind::Mention(_)))
                .count(),
            1
        );
    }

    #[test]
    fn plain_text_drops_the_marks() {
        assert_eq!(super::plain("in **10 minutes**, `ok`"), "in 10 minutes, ok");
    }

    #[test]
    fn blocks() {
        let b = parse("intro\nline two\n\n```\n  let x = 1;\n<b>\n```\n> quoted\n> more\n- one\n- two\n1. first");
        assert_eq!(b.len(), 5, "{b:?}");
        assert!(matches!(&b[0], Block::Paragraph(s) if s[0].text == "intro\nline two"));
        assert_eq!(b[1], Block::Code("  let x = 1;\n<b>".into()));
        assert!(matches!(&b[2], Block::Quote(s) if s[0].text == "quoted\nmore"));
        assert!(matches!(&b[3], Block::List { ordered: false, items } if items.len() == 2));
        assert!(matches!(&b[4], Block::List { ordered: true, .. }));
    }

    #[test]
    fn hostile_input_is_text_and_quick() {
        // Raw HTML is text.
        assert_eq!(
            flat(&parse("<script>alert(1)</script>")),
            "<script>alert(1)</script>"
        );
        // An unclosed fence takes the rest as code.
        assert_eq!(parse("```\nno end"), vec![Block::Code("no end".into())]);
        // 4,000 asterisks, and deep nesting, in linear time.
        let stars = "*".repeat(4_000);
        let t = std::time::Instant::now();
        let s = inline(&stars);
        assert_eq!(s, vec![plain(&stars)], "stars alone are text");
        let nested = "**_~~".repeat(800) + "x" + &"~~_**".repeat(800);
        let _ = inline(&nested);
        let mixed: String = (0..4_000)
            .map(|i| ["*", "_", "`", "~", "a "][i % 5])
            .collect();
        let _ = parse(&mixed);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        // Many lines stay bounded in blocks.
        assert!(parse(&"- x\n\n".repeat(1_000)).len() <= MAX_BLOCKS + 1);
    }
}
