"""``tunelab plan``: the memory of one training step from a model's config alone, and the
largest batch that fits a device.

No weights are read and nothing runs: the model is built on the meta device with the method
applied (exact parameter counts, as ``tunelab params``), and the activations come from a model
of what a transformer block saves for backward. Calibrated against ``tunelab profile``'s
measured steps (docs/RESULTS.md, "Memory planner against measured steps").

Components, per device:

- weights: frozen parameters at the storage precision (float32, or bf16/fp16), trained ones in
  float32 (master weights), and under bf16/fp16 autocast's half-precision copy of every trained
  matrix (autocast caches the cast for the whole step);
- gradients: float32, one per trained parameter; optimizer state: AdamW's two float32 moments;
- with ``--devices N``: FSDP shards those three by N (activations stay per device, the batch is
  per device) and unshards two blocks' weights at a time (the one running and the prefetched one);
- activations: what autocast/autograd save for backward (:mod:`tunelab.planner.activations`);
- workspace: transient buffers beside the saved tensors at the worst moment of backward: a
  causal LM's loss (the log-probabilities' gradient and the logits' gradient, float32, every
  predicted token x vocabulary), or one block's activation gradients, whichever is larger.

``total`` is what ``tunelab profile`` reports as its backward peak (weights + gradients +
optimizer state + activations); ``peak`` = total + workspace is what must fit the device.

The activation model, per block that gradients flow through (every block at or after the first
one with something trained; none for head-only tuning of a frozen body, all of them for prompt
and prefix tuning or a trained input embedding, e.g. a tied LM head; in the first such block,
only what comes after the first trained module, e.g. nothing of the attention when adapters
sit on its output projection):

- two norms: each saves its input (float32 under autocast, which runs LayerNorm in float32, and
  under transformers' RMSNorm, which upcasts) and its statistics; RMSNorm with a trained weight
  also the normalised tensor;
- attention: fused SDPA (flash / memory-efficient) saves q, k, v, its output (which the output
  projection reads as a view) and a float32 log-sum-exp per head, k and v with their own
  key/value heads: sequences are taken as unpadded, so no mask goes in (with one, as prefix
  tuning's, transformers repeats k and v to every head and the mask is kept too). Eager
  attention, and SDPA's math fallback on the CPU when attention dropout is on, saves q, k, v at
  every head and the probabilities (T x T per head: the float32 softmax, plus the dropped-out
  copy and its mask, or autocast's half copy);
- a learned magnitude on a low-rank update (DoRA) adds two tensors of the projection's output
  width per adapted projection; dropout on the update's input (LoRA dropout) a dropped-out copy
  of the input (and its mask) per adapted projection;
- feed-forward: the activation's input (tanh-GELU written in Python: four tensors), and for a
  gated MLP the two factors of the product as well;
- dropout: a mask per dropout on the hidden state (1 byte on CUDA, activation-sized on the CPU);
- projections: a projection saves its input only if its weight trains (full fine-tuning; the
  last blocks of head-only tuning): a frozen projection passes the gradient back through its
  weight, which needs no activation. What a method's modules add, each module describes itself
  (:mod:`tunelab.methods.memory_sites`): a low-rank update (LoRA) saves the input its A reads
  (once per input it shares with other A's) and B's input (r per adapted slice); a scale vector
  (IA3) the tensor it scales; a bottleneck (adapters) its input and its two inner tensors.

Outside the blocks: the embeddings' norm and dropout (post-LN encoders, when the input trains),
the final norm (pre-LN decoders), and the head: a causal LM keeps the float32 log-probabilities
of every predicted token ((T - 1) x vocabulary, as tunelab's loss computes them: the largest
tensor of a small model with a large vocabulary), an encoder's classifier its pooled input.

Gradient checkpointing keeps each block's input and recomputes one block at a time in backward,
so the blocks' sum becomes (blocks x T x hidden) + one block.

Left out: the CUDA context and the caching allocator's fragmentation (leave 1-2 GB), buffers
(rotary tables, position ids), small per-token tensors (masks, indices, RoPE's cos and sin),
methods whose modules describe no memory site (PEFT's tuners: counted by their parameters only).
"""
