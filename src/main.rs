fn main() {
    std::process::exit(mongo_migrate::cli::main());
}
