//! `docs/api.md` is the API's one reference: its curl examples run here, in order, against a real
//! server, so the document cannot drift from what the server does.

use crate::helpers::*;

/// The `sh` code blocks of a Markdown document, in order.
fn sh_blocks(markdown: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test]
async fn the_curl_examples_in_docs_api_md_work() {
    let app = spawn_secure_app().await;
    let ann = app.sign_up("ann", "Ann").await;
    app.sign_up("bob", "Bob").await;
    let token = app.token(&ann, "docs").await;
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"))
        .expect("docs/api.md");
    let blocks = sh_blocks(&doc);
    assert!(blocks.len() >= 10, "the examples are found");
    let base = app.url("");
    let base = base.trim_end_matches('/').to_owned();
    for block in blocks {
        let script = format!("set -e\n{block}");
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env("HUBBUB", &base)
            .env("TOKEN", &token)
            .output()
            .await
            .expect("sh");
        assert!(
            out.status.success(),
            "this example failed:\n{block}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What the examples did is there: the room, renamed, with the message.
    let history = app
        .http
        .get(app.url("/api/rooms/design/messages"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("get")
        .text()
        .await
        .expect("body");
    assert!(history.contains("hello, design"), "{history}");
    assert!(history.contains("room_renamed"), "{history}");
    // The edit, the reaction and the deleted reply.
    assert!(history.contains("hello, design team"), "{history}");
    assert!(history.contains("🎉"), "{history}");
    assert!(history.contains(r#""deleted":true"#), "{history}");
    // The file.
    assert!(history.contains(r#""name":"notes.txt""#), "{history}");
}
