//! What ckpt's command-line tools share.

/// A command-line parser's error on one line: its lines up to the usage, without its
/// "error: " (the tools print it after their name, pointing at `--help`).
pub fn usage_line(text: &str) -> String {
    let said: Vec<&str> = text.lines().map(str::trim).take_while(|l| !l.is_empty()).collect();
    let line = said.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}
