//! The process's allocator, mimalloc, and the thread that lets an idle server give memory
//! back to the system.
//!
//! mimalloc keeps blocks of one size together, so what hibernating connections free (their
//! tasks, buffers and protocol state) empties whole pages instead of leaving holes between
//! live connections. It returns an empty page to the system a purge delay (1 s) after it
//! emptied, but only when some thread later allocates or frees a page, and a server whose
//! connections all went to sleep does neither: the pages would stay resident until the next
//! keepalive round. [`spawn_janitor`] does that purging once a second instead.
//!
//! Built with mimalloc's `no_thp`: it does not ask for transparent huge pages, which the
//! kernel's khugepaged would otherwise fill back in around the purged pages of a sparse heap
//! (on this kind of machine a 2 MiB huge page for a few live connections' bytes).

use std::time::Duration;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often the janitor lets mimalloc purge what is due.
const PURGE_EVERY: Duration = Duration::from_secs(1);

/// Starts the thread that lets mimalloc return emptied pages once their purge delay passed.
pub(crate) fn spawn_janitor() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("roost-allocator".into())
        .spawn(|| {
            loop {
                std::thread::sleep(PURGE_EVERY);
                // SAFETY: `mi_collect` takes no pointer and may be called from any thread at
                // any time; with `false` it frees nothing in use and purges only what is due.
                #[allow(unsafe_code)]
                unsafe {
                    libmimalloc_sys::mi_collect(false);
                }
            }
        })?;
    Ok(())
}
