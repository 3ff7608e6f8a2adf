"""PyTorch reference of Mosaic's nanoTabPFN-style model, and writer of the C++ tests' debug state.

Needs Debian's /usr/bin/python3 with python3-torch and python3-numpy (torch 1.13; also runs on
current PyTorch). The semantics are those of /work/shared/DESIGN.md, "The model"; parameter
names match nanoTabPFN's module so state_dict() exports them directly.

Usage:
  /usr/bin/python3 scripts/tabpfn_reference.py
      check the default model's parameter count (356,066) and exit
  /usr/bin/python3 scripts/tabpfn_reference.py --write-debug-state OUT.bin [--seed 0]
      [--B 3 --R 11 --F 4 --S 6 --E 16 --heads 2 --H 24 --L 2 --outputs 3]
      [--lr 3e-3 --weight-decay 0.01 --steps 10 --warmup 3 --sf-lr 4e-3]
      random inputs and parameters, run in float64: logits, loss, gradients, a short AdamW
      run (lrs, train_losses) and, from the same start, a schedule-free AdamW run (sf_lrs,
      sf_losses, the final sf_y.NAME and sf_x.NAME), written as float32 tensors (see tensor_file.py)
"""
import argparse
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

from tensor_file import write_tensors

DEFAULT_PARAMETERS = 356066  # E=96, heads=4, H=192, L=3, outputs=2


class FeatureEncoder(nn.Module):
    def __init__(self, E):
        super().__init__()
        self.linear_layer = nn.Linear(1, E)

    def forward(self, x, S):
        # x (B, R, F) -> (B, R, F, E); statistics from train rows only, so test rows never leak
        train = x[:, :S]
        mean = train.mean(dim=1, keepdim=True)
        std = train.std(dim=1, keepdim=True)  # unbiased (Bessel) by default, in 1.13 and 2.x
        x = ((x - mean) / (std + 1e-20)).clamp(-100.0, 100.0)
        return self.linear_layer(x.unsqueeze(-1))


class TargetEncoder(nn.Module):
    def __init__(self, E):
        super().__init__()
        self.linear_layer = nn.Linear(1, E)

    def forward(self, y, S):
        # y (B, R) class indices as floats -> (B, R, 1, E); test labels hidden behind the train mean
        train = y[:, :S]
        test = train.mean(dim=1, keepdim=True).expand(-1, y.shape[1] - S)
        y = torch.cat([train, test], dim=1)
        return self.linear_layer(y.unsqueeze(-1)).unsqueeze(2)


class TransformerBlock(nn.Module):
    def __init__(self, E, heads, H):
        super().__init__()
        self.self_attention_between_features = nn.MultiheadAttention(E, heads, batch_first=True)
        self.self_attention_between_datapoints = nn.MultiheadAttention(E, heads, batch_first=True)
        self.linear1 = nn.Linear(E, H)
        self.linear2 = nn.Linear(H, E)
        self.norm1 = nn.LayerNorm(E, eps=1e-5)
        self.norm2 = nn.LayerNorm(E, eps=1e-5)
        self.norm3 = nn.LayerNorm(E, eps=1e-5)

    def forward(self, h, S):
        # h (B, R, C, E)
        B, R, C, E = h.shape
        cells = h.reshape(B * R, C, E)
        a = self.self_attention_between_features(cells, cells, cells, need_weights=False)[0]
        h = self.norm1(h + a.reshape(B, R, C, E))

        rows = h.transpose(1, 2).reshape(B * C, R, E)
        train = rows[:, :S]
        a = self.self_attention_between_datapoints(rows, train, train, need_weights=False)[0]
        h = self.norm2(h + a.reshape(B, C, R, E).transpose(1, 2))

        return self.norm3(h + self.linear2(F.gelu(self.linear1(h))))


class Decoder(nn.Module):
    def __init__(self, E, H, outputs):
        super().__init__()
        self.linear1 = nn.Linear(E, H)
        self.linear2 = nn.Linear(H, outputs)

    def forward(self, h):
        return self.linear2(F.gelu(self.linear1(h)))


class TabPFN(nn.Module):
    def __init__(self, E=96, heads=4, H=192, L=3, outputs=2):
        super().__init__()
        self.feature_encoder = FeatureEncoder(E)
        self.target_encoder = TargetEncoder(E)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(E, heads, H) for _ in range(L))
        self.decoder = Decoder(E, H, outputs)

    def forward(self, x, y, S):
        """x (B, R, F), y (B, R) float class indices -> logits (B, R-S, outputs)."""
        h = torch.cat([self.feature_encoder(x, S), self.target_encoder(y, S)], dim=2)
        for block in self.transformer_blocks:
            h = block(h, S)
        return self.decoder(h[:, S:, -1])


def tabpfn_loss(logits, y, S):
    """Cross-entropy averaged over all B*(R-S) test rows."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[:, S:].long().reshape(-1))


def learning_rate(lr, step, steps, warmup):
    """Linear warm-up then cosine decay to 0; the C++ trainer uses the identical formula."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


class ScheduleFreeAdamW:
    """Schedule-free AdamW as Algorithm 1 of Defazio et al. 2024, "The Road Less Scheduled".

    The module's parameters hold y, where the gradient is taken; z (the base sequence), x (the
    average, the weights to evaluate) and the second moment v are kept here. Step t (from 1):
        v_t     = beta2 v_{t-1} + (1 - beta2) g_t^2
        lr_t    = lr sqrt(1 - beta2^t) min(1, t / warmup)     warmup and Adam's bias correction
        z_{t+1} = z_t - lr_t g_t / (sqrt(v_t) + eps) - lr_t weight_decay y_t
        c_{t+1} = lr_t^2 / sum_{i <= t} lr_i^2                the paper's weighting with r = 0
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}
        y_{t+1} = (1 - beta1) z_{t+1} + beta1 x_{t+1}
    with z_1 = x_1 = y_1 the initial parameters. No learning-rate schedule beyond the warmup.
    """

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, warmup=0):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay, self.warmup = lr, betas, eps, weight_decay, warmup
        self.z = [p.detach().clone() for p in self.params]
        self.x = [p.detach().clone() for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.lr_sq_sum = 0.0

    def scheduled_lr(self, t):
        """lr times the warmup factor min(1, t / warmup), t from 1 (what the trainer logs)."""
        return self.lr * (min(1.0, t / self.warmup) if self.warmup > 0 else 1.0)

    @torch.no_grad()
    def step(self):
        beta1, beta2 = self.betas
        self.t += 1
        lr_t = self.scheduled_lr(self.t) * math.sqrt(1.0 - beta2 ** self.t)
        self.lr_sq_sum += lr_t * lr_t
        c = lr_t * lr_t / self.lr_sq_sum if self.lr_sq_sum > 0 else 0.0
        for y, z, x, v in zip(self.params, self.z, self.x, self.v):
            g = y.grad
            v.mul_(beta2).add_((1.0 - beta2) * g * g)
            z.sub_(lr_t * (g / (v.sqrt() + self.eps) + self.weight_decay * y))
            x.mul_(1.0 - c).add_(c * z)
            y.copy_((1.0 - beta1) * z + beta1 * x)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def randomize(model):
    # LayerNorm affines and attention biases start as constants; make them random so a
    # transposed or dropped term cannot hide behind a 1 or a 0.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".norm" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            elif ".norm" in name or ("attention" in name and "bias" in name):
                p.copy_(0.1 * torch.randn_like(p))


def debug_state(args):
    """Everything the C++ reference test compares against, as an ordered dict of tensors."""
    torch.manual_seed(args.seed)
    model = TabPFN(args.E, args.heads, args.H, args.L, args.outputs)
    randomize(model)
    model.double()
    x = torch.randn(args.B, args.R, args.F, dtype=torch.float64)
    y = torch.randint(0, args.outputs, (args.B, args.R)).double()

    def numpy(t):
        # a copy: .numpy() shares memory, and the optimizer below updates parameters in place
        return t.detach().cpu().numpy().copy()

    state = {
        "config": [args.B, args.R, args.F, args.S, args.E, args.heads, args.H, args.L, args.outputs,
                   args.lr, args.weight_decay, args.steps, args.warmup],
        "x": numpy(x),
        "y": numpy(y),
    }
    params = dict(model.named_parameters())
    for name, p in params.items():
        state[name] = numpy(p)

    logits = model(x, y, args.S)
    loss = tabpfn_loss(logits, y, args.S)
    loss.backward()
    state["logits"] = numpy(logits)
    state["loss"] = numpy(loss).reshape(1)
    for name, p in params.items():
        state["grad." + name] = numpy(p.grad)
    model.zero_grad(set_to_none=True)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=args.weight_decay)
    lrs, losses = [], []
    for step in range(args.steps):
        lr = learning_rate(args.lr, step, args.steps, args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = tabpfn_loss(model(x, y, args.S), y, args.S)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lrs.append(lr)
        losses.append(loss.item())
    state["lrs"] = lrs
    state["train_losses"] = losses

    # schedule-free AdamW from the same start (the initial parameters are in the state)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(torch.from_numpy(state[name]).double())
    optimizer = ScheduleFreeAdamW(model.parameters(), lr=args.sf_lr, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=args.weight_decay, warmup=args.warmup)
    state["sf_config"] = [args.sf_lr, args.weight_decay, args.steps, args.warmup]
    lrs, losses = [], []
    for step in range(args.steps):
        loss = tabpfn_loss(model(x, y, args.S), y, args.S)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
        optimizer.step()
        model.zero_grad(set_to_none=True)
        lrs.append(optimizer.scheduled_lr(step + 1))
        losses.append(loss.item())
    state["sf_lrs"] = lrs
    state["sf_losses"] = losses
    for (name, p), x_avg in zip(params.items(), optimizer.x):
        state["sf_y." + name] = numpy(p)
        state["sf_x." + name] = numpy(x_avg)
    return state


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-debug-state", metavar="OUT.bin", help="write the debug state here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--B", type=int, default=3, help="datasets")
    parser.add_argument("--R", type=int, default=11, help="rows per dataset")
    parser.add_argument("--F", type=int, default=4, help="features")
    parser.add_argument("--S", type=int, default=6, help="train rows, 2 <= S < R")
    parser.add_argument("--E", type=int, default=16, help="embedding size")
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--H", type=int, default=24, help="MLP hidden size")
    parser.add_argument("--L", type=int, default=2, help="layers")
    parser.add_argument("--outputs", type=int, default=3, help="classes")
    parser.add_argument("--lr", type=float, default=3e-3, help="base learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=10, help="AdamW steps recorded")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps of the schedule")
    parser.add_argument("--sf-lr", type=float, default=4e-3, help="schedule-free AdamW's learning rate")
    args = parser.parse_args()

    count = parameter_count(TabPFN())
    assert count == DEFAULT_PARAMETERS, f"default model has {count} parameters, expected {DEFAULT_PARAMETERS}"
    if args.write_debug_state is None:
        print(f"default model: {count:,} parameters (ok)")
        return 0
    if not 2 <= args.S < args.R:
        parser.error("need 2 <= S < R (unbiased std over train rows, at least one test row)")
    if args.E % args.heads != 0:
        parser.error("E must be divisible by heads")

    state = debug_state(args)
    write_tensors(args.write_debug_state, state)
    print(f"wrote {len(state)} tensors to {args.write_debug_state}: "
          f"loss {state['loss'][0]:.6f}, train_losses[-1] {state['train_losses'][-1]:.6f}, "
          f"sf_losses[-1] {state['sf_losses'][-1]:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
