"""The engine's process boundary: the worker process, the runner that speaks to it, their
protocol, crash resume, activity reports, and the in-process (thread) runner."""
