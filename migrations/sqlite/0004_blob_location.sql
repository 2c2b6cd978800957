-- Where a blob's bytes live when not at the store's place for its digest (an S3 object
-- completed at its upload's own key, so no server-side copy is needed). NULL: derived.
ALTER TABLE blobs ADD COLUMN location TEXT;
