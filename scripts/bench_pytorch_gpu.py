"""One PyTorch training step of the reference model on the GPU (forward, backward, clip 1.0, AdamW),
the step scripts/gpu_check.sh times; median of 5 after 2 warm-up steps, one JSON line.
  python3 scripts/bench_pytorch_gpu.py --batch 32 --rows 150 --config default   (run from the repo root)"""
import argparse, json, statistics, sys, time
sys.path.insert(0, "scripts")
import torch
from tabpfn_reference import TabPFN, tabpfn_loss
p = argparse.ArgumentParser()
p.add_argument("--batch", type=int); p.add_argument("--rows", type=int); p.add_argument("--config")
a = p.parse_args()
rec = {"bench": "pytorch_train_step", "config": a.config, "build": "pytorch_cuda", "batch": a.batch,
       "rows": a.rows, "torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
try:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = TabPFN(96, 4, 192, 3, 2).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x = torch.randn(a.batch, a.rows, 5, device=dev)
    y = torch.randint(0, 2, (a.batch, a.rows), device=dev).float()
    S = a.rows // 2
    times = []
    for step in range(2 + 5):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        loss = tabpfn_loss(model(x, y, S), y, S)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        if step >= 2: times.append(time.perf_counter() - t0)
    ms = 1000.0 * statistics.median(times)
    rec.update(ms_per_step=round(ms, 3), datasets_per_s=round(a.batch / (ms / 1000.0), 2))
except RuntimeError as e: # e.g. out of memory at 150,000 rows (full attention matrices)
    rec["error"] = str(e).splitlines()[0][:200]
print(json.dumps(rec))
