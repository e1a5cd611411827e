"""Scoring/recipe ablation on the demo data used for docs/accuracy.md (ad-hoc research script).

Usage: python benchmarks/ablation_scoring.py CATEGORY EPOCHS_RECON EPOCHS_FLOW LR_FLOW DEPTH HFLIP VFLIP

Trains DADF lite on one demo category (data generated with dadf_fast.data.synthetic.make_dataset
under /tmp/exp/demo) and prints image AUROC (max and top-1% mean) and pixel AUROC for several
ways of turning the flow latents / reconstruction errors into a map, raw and smoothed (sigma 4).
"""
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(2)
from dadf_fast import DADF
from dadf_fast.data.datasets import MVTecAD
from dadf_fast import metrics
import torch.nn.functional as F
from dadf_fast.models.postprocess import gaussian_smooth as _smooth
root = "/tmp/exp/demo"
if not os.path.exists(os.path.join(root, "brick")):
    from dadf_fast.data.synthetic import make_dataset
    make_dataset(root, seed=0)
cat = sys.argv[1]; e1 = int(sys.argv[2]); e2 = int(sys.argv[3]); lr=float(sys.argv[4]); depth=int(sys.argv[5])
torch.manual_seed(0)
m = DADF("lite", depth=depth, flow_norm="image")  # the rows of docs/accuracy.md predate the channel norm
tr = MVTecAD(root, cat, "train"); te = MVTecAD(root, cat, "test")
t = time.time()
res = m.fit(tr, recipe="paper", epochs_recon=e1, epochs_flow=e2, lr_flow=lr, grad_clip=1.0, progress=False, hflip=bool(int(sys.argv[6])), vflip=bool(int(sys.argv[7])))
print("fit", time.time()-t, res["seconds"], res["loss_recon"][-1], res["loss_flow"])
def zs_of(imgs):
    outs=[]
    with torch.no_grad():
        for c in torch.split(imgs, 8):
            f = m.features(c); l,g = m.reconstructor(f)
            ins = m.flow_inputs(f,l,g)
            zs = [fl(x)[0] for fl,x in zip(m.flows, ins)]
            nll = [0.5*(z**2).mean(1,keepdim=True) for z in zs]
            rec = [((ff-ll)**2).mean(1,keepdim=True)+((ff-gg)**2).mean(1,keepdim=True) for ff,ll,gg in zip(f,l,g)]
            outs.append((nll, rec))
    return [torch.cat([o[0][s] for o in outs]) for s in range(3)], [torch.cat([o[1][s] for o in outs]) for s in range(3)]
trimgs = torch.stack([tr[i]["image"] for i in range(len(tr))])
imgs = torch.stack([te[i]["image"] for i in range(len(te))]); masks = torch.stack([te[i]["mask"] for i in range(len(te))])[:,0].numpy()>0.5
labels = np.array([te[i]["label"] for i in range(len(te))])
tn, trr = zs_of(trimgs); sn, sr = zs_of(imgs)
up = lambda t: F.interpolate(t, size=(256,256), mode="bilinear", align_corners=False)
def report(name, amap):
    for sig in (0, 4):
        a = _smooth(amap, sig)[:,0]
        flat = a.flatten(1)
        k = max(1, flat.shape[1]//100)
        print(f"{cat} {name:22s} s{sig} img-max {metrics.auroc(flat.max(1).values.numpy(), labels):.3f} img-top1% {metrics.auroc(flat.topk(k,1).values.mean(1).numpy(), labels):.3f} px {metrics.pixel_auroc(a.numpy(), masks):.3f}")
report("paper exp", 1 - sum(up(torch.exp(-n)) for n in sn)/3)
# standardized nll per scale
std = lambda test, train: sum(up((t - tr_.mean())/tr_.std()) for t, tr_ in zip(test, train))/len(test)
report("nll std", std(sn, tn))
report("rec std", std(sr, trr))
report("nll+rec std", std(sn, tn) + std(sr, trr))
report("nll std s2,3", std(sn[1:], tn[1:]))
report("nll std s3", std(sn[2:], tn[2:]))
report("nll std s2", std(sn[1:2], tn[1:2]))
report("paper exp s2,3", 1 - sum(up(torch.exp(-n)) for n in sn[1:])/2)
report("nll+rec s2,3", std(sn[1:], tn[1:]) + std(sr[1:], trr[1:]))
