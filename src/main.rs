fn main() -> std::process::ExitCode {
    zlh::cli::main()
}
