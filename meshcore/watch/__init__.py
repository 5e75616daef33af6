"""List-then-watch client cache of one cell's records (Cilium's restartable watch store).

Flow: `WatchSource.watch` batches -> validate each record against its key (and an optional
per-peer check) -> local records -> `on_change` callbacks. A listing marks every known key stale;
the batch flagged `synced` ends it and deletes exactly the keys the listing did not mention.
A resume continues from the last revision; `ResumeUnavailable` makes the next attempt a relist.
"""

from meshcore.watch.listwatch import Change, ListWatcher, WatchSource, WatchState

__all__ = ["Change", "ListWatcher", "WatchSource", "WatchState"]
