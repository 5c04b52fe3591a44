"""The autograd Functions of the two fused ops, one each, whatever computes their forward (a
Triton kernel or its torch twin). Both differentiate only what cramming needs: the gradient
reaches ``mem`` and ``hidden``; the frozen embedding matrix and LM head get none."""
from __future__ import annotations

import torch


class MemEmbed(torch.autograd.Function):
    """[mem ; embedding[ids]]: mem's gradient is the first m rows of grad_out (the embedding's
    large, sparse gradient is never formed)."""

    @staticmethod
    def forward(ctx, forward_impl, input_ids, embedding, mem):
        ctx.m, ctx.mem_dtype = mem.shape[1], mem.dtype
        return forward_impl(input_ids, embedding, mem)

    @staticmethod
    def backward(ctx, grad_out):
        grad_mem = grad_out[:, :ctx.m].to(ctx.mem_dtype) if ctx.needs_input_grad[3] else None
        return None, None, None, grad_mem


class LinearCrossEntropy(torch.autograd.Function):
    """Per-row CE of hidden @ W.T (+ b). The logits are gone after forward, so forward computes
    d loss / d hidden as it goes (when ``want_grad``), and backward only scales each row of it
    by the incoming gradient of that row's loss."""

    @staticmethod
    def forward(ctx, forward_impl, want_grad, hidden, weight, targets, bias):
        loss, argmax, margin, grad = forward_impl(hidden, weight, targets, bias, want_grad)
        if want_grad:
            ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(argmax, margin)
        return loss, argmax, margin

    @staticmethod
    def backward(ctx, grad_loss, _grad_argmax, _grad_margin):
        (grad,) = ctx.saved_tensors
        return None, None, grad * grad_loss[:, None].to(grad.dtype), None, None, None
