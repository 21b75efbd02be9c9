-- The user index moves out of SQLite, into the LSM tree beside it that already holds the
-- dedupe index (fjall: `src/embedded/ids.rs`, keyspace `users`), filled at every commit.
--
-- Migration 6's bulk passes kept commits from touching a page per user, but each pass still
-- merged its rows into the B-tree at as many places as there are users, and the cost per event
-- grew with the table: `commit_throughput` with random ids (RANDOM_IDS=1, batches of 5,000)
-- averaged 54,100 events/s over 9M events against 94,000–103,000 over the first 2M, and
-- 96,300 over 9M with the passes left out. An LSM tree takes the entries in memory and writes
-- them out sorted.
--
-- The entries are not copied: opening the warehouse finds no `users` keyspace and indexes every
-- event again.
DROP TABLE IF EXISTS user_index;
DROP TABLE IF EXISTS user_index_state;
