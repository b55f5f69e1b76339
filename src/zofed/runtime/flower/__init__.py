"""zofed on Flower (flwr 1.41, Message API): the only package that imports flwr.

One ServerApp and one ClientApp run any registered algorithm from the same RunConfig as the
local runtime. The server runs the same run loop (`runtime/driver.py`) and the same round body
(`runtime/round.py`: configure, screen, aggregate); only the transport differs (`GridTransport`):
each client's message is our codec's bytes in a Flower record, and each ClientApp runs
`round.client_round` on them.

- `runtime=flower-sim`: Flower's simulation engine (Ray) with one virtual SuperNode per client
  (`simulation.py`).
- `runtime=flower`: a running SuperLink and SuperNodes; `zofed run` submits the app with
  `flwr run` (`deployment.py`).

Choices where Flower leaves room:
- The codec's bytes travel as one uint8 array (stype "zofed.codec") in an ArrayRecord: the
  ledger counts exactly those bytes, and seeds/scalars stay packed as the codec packs them.
- Client id = the SuperNode's `partition-id` (node config). The server learns which node holds
  which partition by a `query` message at start (and for any node it has not seen, each round),
  which also hands the node the run's config; a node keeps it in its Context state.
- A client told to keep its model (replay downlink) keeps it in its Context state (simulation:
  the engine keeps each virtual node's state across rounds whichever Ray worker runs it), or,
  when the node config names a `state-dir`, in a safetensors file there, so it survives a
  SuperNode restart.
- A client that errs or misses `flower.timeout_s` is dropped from the round; the round
  aggregates the others if at least `flower.min_replies` answered.
"""
