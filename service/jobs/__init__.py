"""Whole-video jobs: upload a video, track it in the background, fetch the results.

Two job managers offer the routes the same async interface (``admission.JobBackend``):
``local.LocalJobManager`` runs jobs in this process; ``redis_manager.RedisJobManager`` records
them in Redis, where ``redis_worker.JobWorker`` on ``ctvis worker`` processes runs them with
checkpointed progress. Shared by both: ``status`` (the typed job record and its Redis
encoding), ``video`` (validating the upload and running the job) and ``admission`` (the
limits, the upload quota and the manager interface).
"""
