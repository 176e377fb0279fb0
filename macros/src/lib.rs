//! `embed_migrations!("dir")`: compiles an application's `dir/NNN_snake_name.rs` files in and
//! returns them as a `Vec<mongo_migrate::Registered>`, with the same checksums and the
//! same `down` detection as the `mongo-migrate` crate's own `build.rs` (both read
//! `src/engine/sources.rs`). Use it through `mongo_migrate::embed_migrations!`.

use proc_macro::TokenStream;
use std::fmt::Write as _;
use std::path::PathBuf;

#[allow(dead_code)]
#[path = "../../src/engine/sources.rs"]
mod sources;

/// The migrations in `dir` (relative to the calling crate's `Cargo.toml`), in number order, as
/// a `Vec<mongo_migrate::Registered>` expression.
///
/// Each file becomes a module, so an edit to one recompiles the crate and its checksum is taken
/// again. A new file is not seen until the crate is rebuilt for another reason: add
/// `println!("cargo:rerun-if-changed=DIR");` to the application's `build.rs`.
#[proc_macro]
pub fn embed_migrations(input: TokenStream) -> TokenStream {
    match expand(input) {
        Ok(code) => code.parse().expect("generated code parses"),
        Err(message) => format!("::core::compile_error!({message:?})")
            .parse()
            .expect("compile_error parses"),
    }
}

fn expand(input: TokenStream) -> Result<String, String> {
    let usage = "usage: embed_migrations!(\"dir\"), dir relative to the crate's Cargo.toml";
    let tokens: Vec<_> = input.into_iter().collect();
    let [literal] = tokens.as_slice() else {
        return Err(usage.into());
    };
    let text = literal.to_string();
    let dir = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .filter(|t| !t.contains('\\'))
        .ok_or(usage)?;
    let root = std::env::var("CARGO_MANIFEST_DIR").map_err(|_| "CARGO_MANIFEST_DIR is not set")?;
    let dir = PathBuf::from(root).join(dir);
    let found = sources::scan(&dir).map_err(|problems| {
        format!(
            "invalid migrations directory {}:\n  {}",
            dir.display(),
            problems.join("\n  ")
        )
    })?;

    let mut code = String::from("{\n");
    let mut list = String::new();
    for (number, source) in &found {
        let path = source.path.display().to_string();
        let text = std::fs::read(&source.path).map_err(|e| format!("cannot read {path}: {e}"))?;
        let checksum = sources::checksum(&text);
        let legacy = sources::legacy_checksums(&source.name, &text);
        let doc = sources::module_doc(&String::from_utf8_lossy(&text));
        let module = format!("__migration_{number:03}");
        writeln!(code, "    #[path = {path:?}]\n    mod {module};").unwrap();
        // Recompile when the file changes even where module files are not tracked.
        writeln!(
            code,
            "    const _: &[u8] = ::core::include_bytes!({path:?});"
        )
        .unwrap();
        // A source that defines `down` is reversible whether or not it says so.
        let migration = if sources::defines_down(&String::from_utf8_lossy(&text)) {
            format!("::mongo_migrate::registry::with_down({module}::migration())")
        } else {
            format!("::std::sync::Arc::new({module}::migration())")
        };
        writeln!(
            list,
            "        ::mongo_migrate::Registered {{ number: {number}, name: {:?}, checksum: {checksum:?}, legacy: &{legacy:?}, doc: {doc:?}, migration: {migration} }},",
            source.name
        )
        .unwrap();
    }
    write!(code, "    ::std::vec![\n{list}    ]\n}}").unwrap();
    Ok(code)
}
