"""Put on PYTHONPATH of a SuperNode (and the processes it starts): it reports to the SuperLink every 10 s, Flower's
least interval, instead of every 30 s. The SuperLink marks a node offline after two missed intervals, so a test
that kills a node waits 10-20 s for the SuperLink to say so, not 30-60 s. Flower has no option for it: the
constant is read when its connection module is imported, after this runs."""

import flwr.common.constant as constant

constant.HEARTBEAT_DEFAULT_INTERVAL = constant.HEARTBEAT_MIN_INTERVAL
