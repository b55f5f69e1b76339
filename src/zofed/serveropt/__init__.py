"""Server optimisers: (init, update) pairs over dicts of tensors, state passed in and out.

Modelled on optax's GradientTransformation. A `Transform` has
    init(params) -> state
    update(grads, state, params) -> (updates, new_state)
and `chain` runs several in sequence. The server moves the model by `params + updates`.

Convention: what the server feeds in is the round's pseudo-gradient Δ = θ_old − θ_new (the
sample-weighted mean of the clients' old − new weights), i.e. it points uphill like a gradient.
So `sgd(lr=1.0)` without momentum gives θ_new = mean of the clients' weights: plain FedAvg.
FedAvgM / FedAdam / FedAMSGrad / FedYogi (Reddi et al., ICLR 2021) are the other settings.

State is explicit and storable: an `OptState` holds tensors (named "<component>/<slot>/<param>")
and JSON info (step counts). `to_server_state`/`from_server_state` put it into a ServerState's
buffers (prefixed "serveropt/") and info (key "serveropt"), so checkpoint/resume is bit-identical.

Choices where the sources differ (all configurable through `ServerOptimizerSettings`):
  - Adam/AMSGrad follow torch.optim.Adam exactly (bias correction on both moments, τ added to
    the bias-corrected √v), so they equal torch.optim on the same pseudo-gradients (tested).
    FedAdam as published has no bias correction; `bias_correction: false` gives that form.
  - Yogi: v ← v − (1−β2)·g²·sign(v − g²), starting from v = 0 (so its first step equals Adam's),
    with the same bias correction and τ as Adam.
  - heavy-ball momentum is torch's SGD form (buffer ← m·buffer + g, no dampening).
  - clipping scales the whole pseudo-gradient so its global L2 norm is at most `clip_norm`,
    before the optimiser sees it.
"""

from zofed.serveropt.transforms import (
    OptState,
    ServerOptimizerSettings,
    Transform,
    adam,
    apply_updates,
    build_server_optimizer,
    chain,
    clip_by_global_norm,
    from_server_state,
    scale,
    scale_by_adam,
    scale_by_yogi,
    server_step,
    sgd,
    to_server_state,
    trace,
    yogi,
)

__all__ = [
    "OptState",
    "ServerOptimizerSettings",
    "Transform",
    "adam",
    "apply_updates",
    "build_server_optimizer",
    "chain",
    "clip_by_global_norm",
    "from_server_state",
    "scale",
    "scale_by_adam",
    "scale_by_yogi",
    "server_step",
    "sgd",
    "to_server_state",
    "trace",
    "yogi",
]
