-- Units an incremental run re-derives (default): the documents of the table's sources changed
-- or deleted since the table's last transform. {changed} holds their old and new versions.
SELECT DISTINCT _id FROM {changed}
