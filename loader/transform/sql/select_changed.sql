-- Units an incremental run re-derives (default): the documents of the table's sources changed
-- or deleted since the table's last transform ({changed_ids}: their _id, read from the deltas).
SELECT DISTINCT _id FROM {changed_ids}
