"""`ackwire bench`: scenarios against a stack the bench starts, each figure beside baselines
measured in the same run (raw NATS JetStream, raw `websockets`, python-socketio).

One module per scenario (jobs, messages, fanout, resume_storm); `figures` holds the
table, the JSON and the percentiles, `programs` runs client programs in processes of
their own, `stack` starts the services under test, `baselines` the raw peers.
"""


class BenchFailedError(Exception):
    """The system under test broke a rule while being measured, or a part of the bench
    did not start."""
