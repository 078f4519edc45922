"""Durable, time-keyed chunk buffers: one per output, under ``STATE_DIR/buffer/OUTPUT/``.

Design
------
Every output owns a :class:`~pipeline.buffer.file_buffer.FileBuffer`. Records are
appended to *chunks*, one open chunk per time window (``timekey``); a chunk is a file
of *frames* (see :mod:`pipeline.buffer.frame`), each frame the records of one source
batch for that window, with a CRC and the *commit sequence number* of the commit that
wrote it.

States, visible in the file name (fluentd's vocabulary)::

    <timekey>.<chunk_id>.staged  ──enqueue──▶  <timekey>.<chunk_id>.queued  ──ack──▶ (deleted)
         ▲ append frames                              │ dequeue → write → nack (retry later)
                                                      └─ retries exhausted / unrecoverable ──▶ dead/
    damaged on resume ──▶ quarantine/

Invariants
----------
1. A source position is committed (``positions.json``) only after every frame holding
   lines before it is written *and fsynced* in every routed output's buffer.
2. Only the committer appends to staged chunks and enqueues them, and it enqueues a
   chunk only after the commit that wrote its last frame. So queued chunks never hold
   uncommitted frames, and a flusher never delivers data whose position could be
   re-read.
3. On start, :meth:`FileBuffer.resume` cuts torn tails (a frame cut short by a crash),
   rolls back frames whose sequence number is above the last committed one (written,
   but their positions were never saved: the tail will read those lines again; the last
   committed one is the saved positions', or a forward source's journal line that was the
   commit point of a commit moving no position, whichever is higher), and
   quarantines a chunk whose middle is damaged after salvaging the frames before the
   damage. Together with (1) and (2) this makes a ``kill -9`` at any instant lose
   nothing and duplicate nothing in the buffer.
4. A chunk's id is chosen when it is created and never changes, so an output can make
   delivery idempotent (S3 object keys, the file output's journal) across retries and
   restarts.
5. Chunks are streamed frame by frame; the backlog is never loaded whole into memory.
"""
