"""Upper bound that the 56x56 mask logits put on held-out mIoU.

Each ground-truth mask of the generated held-out set (models/eval) is reduced to its
56x56 area fractions, turned into logits, upsampled to 224x224 exactly as `maskd eval`
does (bilinear, half-pixel centres) and thresholded at 0.5. The mIoU of these "perfect
56x56 predictions" says how much of the gap to the goal the output resolution can
explain. Run from the repository root: python training/mask_resolution_oracle.py
"""
import numpy as np, glob, tomllib
from PIL import Image
import torch, torch.nn.functional as F
idx=tomllib.load(open('models/eval/index.toml','rb'))
ious=[];sizes=[]
for s in idx['sample']:
    for p in s['prompt']:
        if p.get('kind')!='generated' or 'mask' not in p: continue
        gt=(np.array(Image.open('models/eval/'+p['mask']))!=0).astype(np.float32)
        t=torch.from_numpy(gt)[None,None]
        frac=F.avg_pool2d(t,4)  # 56x56 area fraction
        logit=torch.logit(frac.clamp(1e-3,1-1e-3))
        up=F.interpolate(logit,size=(224,224),mode='bilinear',align_corners=False)
        pred=(up[0,0]>0).numpy()
        g=gt>0
        ious.append((pred&g).sum()/max((pred|g).sum(),1)); sizes.append(g.mean())
ious=np.array(ious);sizes=np.array(sizes)
print('oracle mIoU',ious.mean(),'n',len(ious))
for lo,hi in [(0,.01),(.01,.02),(.02,.04),(.04,.08),(.08,1)]:
    m=(sizes>=lo)&(sizes<hi); print(lo,hi,m.sum(),ious[m].mean())
