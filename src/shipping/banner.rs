//! The first-run setup token, framed on standard output when a person is watching.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;

/// Prints the setup URL and token as a framed block when stdout is a terminal: the log
/// line on stderr scrolls away among the others, and a newcomer looks for this first.
/// Under systemd or a pipe stdout is no terminal and the log line is all there is.
pub fn print_setup_banner(scheme: &str, addr: &SocketAddr, token: &str) {
    let mut out = std::io::stdout();
    if !out.is_terminal() {
        return;
    }
    if let Err(e) = out
        .write_all(render(scheme, addr, token).as_bytes())
        .and_then(|()| out.flush())
    {
        tracing::warn!(error = %e, "printing the first-run banner to stdout");
    }
}

/// The framed block (a box of ASCII, so any terminal shows it).
pub fn render(scheme: &str, addr: &SocketAddr, token: &str) -> String {
    let lines = [
        "zlh first-run setup: no account can sign in yet.".to_string(),
        String::new(),
        format!("  open         {scheme}://{addr}/setup"),
        format!("  setup token  {token}"),
        String::new(),
        "A new token is made at every start until setup is done.".to_string(),
    ];
    let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let rule = format!("+{}+\n", "-".repeat(width + 2));
    let mut s = String::from("\n");
    s.push_str(&rule);
    for l in &lines {
        let pad = width - l.chars().count();
        s.push_str(&format!("| {l}{} |\n", " ".repeat(pad)));
    }
    s.push_str(&rule);
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_frame_is_as_wide() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().expect("an address");
        let s = render("http", &addr, "abc");
        let widths: Vec<usize> = s
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{s}");
        assert!(s.contains("http://127.0.0.1:8080/setup") && s.contains("abc"));
    }
}
