//! Where signed head anchors go: appended to a file, or posted to a URL
//! (`marketplace audit anchor`, `serve --anchor-every`).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use marketplace_keys::Anchor;

/// Appends `anchor` as one line to `path` (created if missing) and syncs it.
pub fn append_to_file(path: &Path, anchor: &Anchor) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("could not open {}", path.display()))?;
    writeln!(f, "{}", anchor.to_line())
        .and_then(|()| f.sync_data())
        .with_context(|| format!("could not write {}", path.display()))
}
