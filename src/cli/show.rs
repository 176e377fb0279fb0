//! `migrate show NNN`: what a migration does, from its own source's documentation, so the
//! description an operator reads is never out of date with the code. Needs no database.

use super::exit_codes::exit;
use super::logging::print_err;
use crate::engine::registry::Registered;
use clap::Args;

/// The arguments of `migrate show`.
#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The migration: its number (3 or 003) or its name (003_migrate_existing_user_balances)
    #[arg(value_name = "NNN|NAME")]
    pub(crate) migration: String,
}

/// `migrate show`: the exit code.
pub(super) fn main(args: &ShowArgs, migrations: &[Registered]) -> i32 {
    match find(&args.migration, migrations) {
        Ok(m) => {
            // Not `println!`, which panics on a closed pipe (`| head`).
            let shown = format!("{}\n", describe(m));
            let _ = std::io::Write::write_all(&mut std::io::stdout(), shown.as_bytes());
            exit::SUCCESS
        }
        Err(e) => {
            // As for a `--to` no migration has: a usage error.
            print_err(format!("error: {e}\n"));
            exit::USAGE
        }
    }
}

fn find<'a>(wanted: &str, migrations: &'a [Registered]) -> Result<&'a Registered, String> {
    let number = wanted.parse::<u32>().ok();
    migrations
        .iter()
        .find(|m| Some(m.number) == number || m.name == wanted)
        .ok_or_else(|| {
            let known: Vec<&str> = migrations.iter().map(|m| m.name).collect();
            format!(
                "no migration is {wanted:?}; this build has {}",
                known.join(", ")
            )
        })
}

/// The migration's name, description, whether it rolls back, its checksum, then its source's
/// documentation.
fn describe(m: &Registered) -> String {
    let reversible = if m.migration.reversible() {
        "yes"
    } else {
        "no"
    };
    let mut out = format!(
        "{}\n  {}\n  reversible: {reversible}    checksum: {}\n",
        m.name,
        m.migration.description(),
        m.checksum.get(..12).unwrap_or(m.checksum)
    );
    if !m.doc.is_empty() {
        out.push('\n');
        out.push_str(m.doc);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migration_is_found_by_number_or_name_and_shows_its_source_documentation() {
        let migrations = crate::engine::registry::compiled();
        let by_number = find("3", &migrations).unwrap();
        let by_name = find("003_migrate_existing_user_balances", &migrations).unwrap();
        assert_eq!(by_number.name, by_name.name);
        let shown = describe(by_number);
        assert!(
            shown.starts_with("003_migrate_existing_user_balances\n"),
            "{shown}"
        );
        assert!(shown.contains("reversible: yes"), "{shown}");
        assert!(shown.contains("**Rounding rule**"), "{shown}");
        assert!(!shown.contains("//!"), "{shown}");
        let missing = find("9", &migrations).unwrap_err();
        assert!(
            missing.contains("001_add_withdrawal_fields_to_users"),
            "{missing}"
        );
    }
}
