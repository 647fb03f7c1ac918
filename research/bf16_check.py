"""bf16 inputs for the compensation: logits from bf16 q and centroids (fp32 accumulation),
bf16 weights x bf16 mean values (fp32 accumulation), fp32 softmax/merge, vs all-fp32.

  PYTHONPATH=. python research/bf16_check.py
"""
import math

import jax.numpy as jnp
import numpy as np

from research import ear_lab as L
from research.run_lab import INPUTS, an_error, log_eff


def comp_bf16(p, sel):
    """Compensated outputs relative error per head, with bf16 matmul inputs."""
    s = 1.0 / math.sqrt(p.D)
    q = jnp.asarray(p.q, jnp.bfloat16)
    c = jnp.asarray(p.kmean, jnp.bfloat16)
    q2 = jnp.sum(jnp.asarray(p.q, jnp.bfloat16).astype(jnp.float32) ** 2, -1)
    lw = (jnp.einsum("nsd,nkd->nsk", q, c, preferred_element_type=jnp.float32) * s
          + jnp.log(jnp.maximum(jnp.asarray(p.ks, jnp.float32), 1))[:, None, :]
          + 0.5 * s * s * q2[..., None] * jnp.asarray(p.kvar.mean(-1), jnp.float32)[:, None, :])
    self_l = jnp.sum(q.astype(jnp.float32) * jnp.asarray(p.k, jnp.bfloat16).astype(jnp.float32), -1) * s
    lw = np.asarray(jnp.where(jnp.asarray(p.ks)[:, None, :] > 0, lw, L.NEG), np.float64)
    fields = {k: v for k, v in p.__dict__.items() if k in L.Problem.__dataclass_fields__}
    p2 = L.Problem(**{**fields, "self_logit": np.asarray(self_l, np.float64),
                      "vmean": np.asarray(jnp.asarray(p.vmean, jnp.bfloat16).astype(jnp.float32), np.float64)})
    return L.evaluate(p2, sel, ("tokself", lw))["err_per_head"]


def main():
    for name in ("A", "N", "B"):
        spec = dict(INPUTS[name]); qc, kc = spec.pop("qc"), spec.pop("kc")
        p = L.make_problem(name, seed=0, qc=qc, kc=kc, **spec)
        lw = L.token_logw(p, "scalar")
        e = an_error(p, lw, L.token_logw(p, "none"), lw)
        for d in (0.02, 0.06):
            sel = L.sel_budget_global(p, log_eff(e, p.ks, 1.0), d, True)
            f32 = L.evaluate(p, sel, ("tokself", lw))["err_per_head"]
            b16 = comp_bf16(p, sel)
            print(name, d, "fp32", np.round(f32, 4), "bf16 inputs", np.round(b16, 4))


if __name__ == "__main__":
    main()
