//! `roost attachments list|show|gc DIR`: what a durable directory holds, for operators.

use std::{
    path::PathBuf,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use roost_server::store::{AttachmentStore, ConnectionId, DirStore};

/// Arguments of `roost attachments`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// List every persisted attachment: id, size, age. Safe while a server runs.
    List {
        /// The server's --durable directory.
        dir: PathBuf,
    },
    /// Print one attachment (as text when it is UTF-8, else as hex). Safe while a server runs.
    Show {
        /// The server's --durable directory.
        dir: PathBuf,
        /// The connection id (32 hex characters, as `list` prints it).
        id: String,
    },
    /// Delete attachments older than a duration. Refused while a server uses the directory.
    Gc {
        /// The server's --durable directory.
        dir: PathBuf,
        /// Age past which an attachment is deleted: a number with s, m, h or d (e.g. 7d).
        #[arg(long, value_parser = parse_duration)]
        older_than: Duration,
    },
}

pub(crate) fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::List { dir } => {
            let store = DirStore::open_read_only(&dir)
                .with_context(|| format!("opening {}", dir.display()))?;
            let mut attachments = store.list()?;
            attachments.sort_by_key(|a| std::cmp::Reverse(a.modified));
            let now = SystemTime::now();
            println!("{:<32}  {:>8}  age", "id", "bytes");
            for attachment in &attachments {
                let age = now.duration_since(attachment.modified).unwrap_or_default();
                println!(
                    "{}  {:>8}  {}",
                    attachment.id,
                    attachment.len,
                    format_age(age)
                );
            }
            eprintln!("{} attachment(s) in {}", attachments.len(), dir.display());
        }
        Command::Show { dir, id } => {
            let id: ConnectionId = id
                .parse()
                .map_err(|e| anyhow::anyhow!("{id:?} is not a connection id: {e}"))?;
            let store = DirStore::open_read_only(&dir)
                .with_context(|| format!("opening {}", dir.display()))?;
            let Some(bytes) = store.get(id)? else {
                bail!("no attachment {id} in {}", dir.display());
            };
            match std::str::from_utf8(&bytes) {
                Ok(text) => println!("{text}"),
                Err(_) => println!(
                    "{}",
                    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            }
        }
        Command::Gc { dir, older_than } => {
            let store = DirStore::open(&dir).with_context(|| {
                format!("opening {} (stop the server using it first)", dir.display())
            })?;
            let removed = store.gc(older_than, |_| false)?;
            println!(
                "removed {removed} attachment(s) older than {}",
                format_age(older_than)
            );
        }
    }
    Ok(())
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number then s, m, h or d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

fn format_age(age: Duration) -> String {
    let seconds = age.as_secs();
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86_400 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("d").is_err());
        assert!(parse_duration("3w").is_err());
    }
}
