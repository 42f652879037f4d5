import torch

from tsallis_rl import garl_loss

# A toy policy: B prompts, Z possible rationales, a learned answer head per rationale.
B, Z, M = 4, 50, 16
prior = torch.zeros(B, Z, requires_grad=True)  # log p(z | x) up to normalisation
answer = torch.full((B, Z), -12.0, requires_grad=True)  # logit of p(y* | x, z): cold start
opt = torch.optim.Adam([prior, answer], lr=0.1)
for step in range(200):
    log_prior = torch.log_softmax(prior, dim=-1)
    z = torch.multinomial(log_prior.exp().detach(), M, replacement=True)  # [B, M] samples
    rationale_logp = log_prior.gather(1, z)  # log p(z_m | x)
    answer_logp = torch.nn.functional.logsigmoid(answer.gather(1, z))  # log p(y* | x, z_m)
    out = garl_loss(rationale_logp, answer_logp, q=0.75)  # the J_Q gradient estimator
    opt.zero_grad()
    out.loss.backward()
    opt.step()
    if step in (0, 10, 25, 50, 100, 199):  # log P-hat climbs from about -12 (the cold start) to ~0
        print(
            f"step {step:3d}: mean log P-hat {out.stats['mean_log_w_bar']:6.2f}, "
            f"max c/M^q {out.stats['max_adv']:.3f}"
        )
