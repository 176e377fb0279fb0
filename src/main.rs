fn main() {
    limit_malloc_arenas();
    std::process::exit(mongo_migrate::cli::main());
}

/// glibc gives each thread that allocates at once an arena of its own (up to 8 per core), and
/// each arena keeps the high-water mark of the batches freed in it: with batches handled on the
/// tokio workers and on rayon, peak RSS grew with the number of threads rather than with the
/// work in flight. One arena keeps it bounded by the batches in flight: 003 on 20k users peaked
/// at 57-59 MiB with glibc's default, 53 with two arenas and 43-44 with one, in the same time (the
/// work is the server's). `MALLOC_ARENA_MAX`, when set, still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: called before any other thread exists; mallopt only sets a glibc parameter.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
