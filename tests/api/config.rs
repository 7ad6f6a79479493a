//! The configuration file: the example starts the server, precedence is flag > environment >
//! file > default, unknown settings are refused by name, `hubbub config check` redacts secrets,
//! and the binary starts in a directory with no files at all.

use crate::helpers::*;
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_hubbub");

/// `hubbub config check ARGS…` with only `env` in its environment: (success, stdout, stderr).
fn check(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(["config", "check"])
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run hubbub config check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("hubbub.toml");
    std::fs::write(&path, text).expect("write");
    path.display().to_string()
}

#[tokio::test]
async fn the_example_file_starts_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/hubbub.example.toml");
    let (ok, out, err) = check(&[example], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("message_rate = \"20\"  # file"), "{out}");
    // The test's address and data directory (environment) override the file's.
    let server = ServerProcess::start(dir.path(), &["--config", example]);
    let health = reqwest::get(server.url("/healthz")).await.expect("health");
    assert_eq!(health.status(), 200);
}

#[test]
fn a_flag_beats_the_environment_which_beats_the_file_which_beats_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        &dir,
        "message_rate = 7\nmax_reactions = 5\nrooms_per_hour = 3\nallow_anonymous = true\n\
         trusted_proxies = [\"127.0.0.1\", \"10.0.0.1\"]\n",
    );
    let (ok, out, err) = check(
        &[&path, "--rooms-per-hour", "9"],
        &[("HUBBUB_MAX_REACTIONS", "6")],
    );
    assert!(ok, "{err}");
    for line in [
        "message_rate = \"7\"  # file",
        "max_reactions = \"6\"  # environment",
        "rooms_per_hour = \"9\"  # flag",
        "typing_max_members = \"100\"  # default",
        "allow_anonymous = \"true\"  # file",
        "trusted_proxies = \"127.0.0.1,10.0.0.1\"  # file",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
    // The same through HUBBUB_CONFIG.
    let (ok, out, _) = check(&[], &[("HUBBUB_CONFIG", &path)]);
    assert!(ok && out.contains("message_rate = \"7\"  # file"), "{out}");
}

#[test]
fn an_unknown_setting_or_a_bad_value_is_refused_with_its_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(&dir, "message_rate = 5\nmesage_rate = 5\n");
    let (ok, _, err) = check(&[&path], &[]);
    assert!(!ok);
    assert!(err.contains("unknown setting `mesage_rate`"), "{err}");
    // The server itself refuses to start with it.
    let out = Command::new(BIN)
        .args(["--config", &path])
        .env_clear()
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mesage_rate"));
    let path = file(&dir, "message_rate = \"lots\"\n");
    let (ok, _, err) = check(&[&path], &[]);
    assert!(!ok && err.contains("lots"), "{err}");
    let path = file(&dir, "message_rate = [\n");
    let (ok, _, err) = check(&[&path], &[]);
    assert!(!ok && err.contains("hubbub.toml"), "{err}");
}

#[test]
fn config_check_redacts_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = file(
        &dir,
        "database = \"postgres://hubbub:hunter2@db.internal:5432/hubbub\"\n\
         bus = \"nats://nats.internal:4222\"\n",
    );
    let (ok, out, err) = check(&[&path], &[]);
    assert!(ok, "{err}");
    assert!(!out.contains("hunter2"), "{out}");
    assert!(
        out.contains("postgres://hubbub:***@db.internal:5432/hubbub"),
        "{out}"
    );
}

#[test]
fn the_binary_starts_in_a_directory_with_no_files() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .env_clear()
        .env("HUBBUB_ADDR", "127.0.0.1:0")
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start");
    let stdout = child.stdout.take().expect("stdout");
    let listening = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l.contains("listening on http://"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "it did not start without Leptos.toml");
    assert!(dir.path().join("data").join("hubbub.sqlite3").exists());
}
