-- No index on events (source, event_id).
--
-- Its only readers were the verification look-ups: `stored_event_ids` answers from
-- event_dedupe's primary key, and `count_by_id_prefix` (run once at the end of a
-- `sluice bench --verify`) now scans the table. Every commit paid for it: SDKs send random UUID
-- messageIds, so each new event landed on a random leaf page of the index, and once the index
-- outgrew the page cache each commit wrote back about one 16 KiB page per event.
-- `commit_throughput` with random ids (RANDOM_IDS=1, 500,000 events, batches of 5,000):
-- 11,600 events/s with the index, 19,100 without (sequential ids: 47,900 and 50,500).
DROP INDEX IF EXISTS events_source_event_id_idx;
