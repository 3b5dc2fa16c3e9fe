-- Run once by the pgvector image when the database is first created.
CREATE EXTENSION IF NOT EXISTS vector;
