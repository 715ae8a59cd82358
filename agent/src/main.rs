//! `agent`: not implemented yet. The issue that builds it is still open; until then this binary refuses to
//! pretend and exits non-zero.

fn main() -> std::process::ExitCode {
    eprintln!("agent: not implemented yet");
    std::process::ExitCode::FAILURE
}
