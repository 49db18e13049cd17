# Diagnosis of the air point (docs/clicks.md, "One-shot: the body mask"): run from the repo root; iterations=10 only
# changes the mixing weights, not the location map. Prints grid row means, air/GT similarity, top cells with flips.
import sys; sys.path.insert(0, ".")
import numpy as np, torch
torch.set_num_threads(1)
from data.readers import read_study
from data.windowing import default_window, slice_to_rgb
from models.registry import load_segmenter
from adapters.persam_oneshot import fit_oneshot
from adapters.persam import similarity_grid
T="/tmp/os18/mricron/usr/share/mricron/templates"
vol=read_study(f"{T}/ch2.nii.gz"); lab=read_study(f"{T}/aal.nii.gz")
mask=np.isin(np.asarray(lab.array),list(range(91,117))); w=default_window(vol,None)
seg=load_segmenter("litemedsam")
ref=slice_to_rgb(vol,42,w); remb=seg.embed(ref)
fit=fit_oneshot(seg,ref,mask[42],method="persam_f",ref_embedding=remb,iterations=10)
img=slice_to_rgb(vol,30,w)
body = img[...,0]>0
for name,im in (("orig",img),("flipud",np.ascontiguousarray(img[::-1]))):
    s=similarity_grid(fit.base.target_feat,seg.embed(im))[0,0].numpy()
    print(name,"row means (grid rows 0-7, 24-31, 56-63):", s[:8,:50].mean().round(3), s[24:32,:50].mean().round(3), s[56:64,:50].mean().round(3))
# air cells: where is the air; sim of air cells by row band
s=similarity_grid(fit.base.target_feat,seg.embed(img))[0,0].numpy()
import torch.nn.functional as F
from adapters.persam import reference_grid_values
cov=reference_grid_values(seg, body, (64,64), parity=False).numpy()
gtc=reference_grid_values(seg, mask[30], (64,64), parity=False).numpy()
air=cov<0.01
print("air cells rows<56 mean sim %.3f  rows>=56 %.3f; gt cells mean %.3f max %.3f; body non-gt mean %.3f" % (s[air & (np.arange(64)[:,None]<56)].mean(), s[air & (np.arange(64)[:,None]>=56)].mean(), s[gtc>0.5].mean(), s[gtc>0.5].max(), s[(cov>0.5)&(gtc<0.5)].mean()))
for name,im in (("orig",img),("flipud",np.ascontiguousarray(img[::-1])),("fliplr",np.ascontiguousarray(img[:, ::-1]))):
    s=similarity_grid(fit.base.target_feat,seg.embed(im))[0,0].numpy()[:, :53]
    idx=np.argsort(s.ravel())[::-1][:8]
    print(name, [(int(i//53), int(i%53), round(float(s.ravel()[i]),3)) for i in idx])
