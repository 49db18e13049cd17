"""CPU time of write_label_nifti for a 256 x 256 x 200 label map: scanner codes (ITK writes them) vs MNI codes
(uncompressed ITK write, header patched, gzip level 6). Interleaved, 5 rounds each, process CPU time."""
import time, os
from dataclasses import replace
import numpy as np
from data.volume import Volume, SourceRef
from data.writers import write_label_nifti
import nibabel as nib
arr = np.zeros((200, 256, 256), np.int16)
labels = np.zeros((200, 256, 256), np.uint8); labels[50:150, 60:200, 70:180] = 1; labels[80:120, 100:150, 90:130] = 2
scanner = Volume(array=arr, source=SourceRef(format="nifti", nifti_codes=(1, 1, 0)))
mni = Volume(array=arr, source=SourceRef(format="nifti", nifti_codes=(4, 4, 0)))
times = {"scanner": [], "mni": []}
for _ in range(5):
    for name, vol in (("scanner", scanner), ("mni", mni)):
        t = time.process_time(); p = write_label_nifti(labels, vol, f"/tmp/adv13_{name}.nii.gz"); times[name].append(time.process_time() - t)
for name in times:
    h = nib.load(f"/tmp/adv13_{name}.nii.gz").header
    print(name, "median CPU s %.3f" % np.median(times[name]), "runs", ["%.3f" % x for x in times[name]],
          "bytes", os.path.getsize(f"/tmp/adv13_{name}.nii.gz"), "codes", int(h["sform_code"]), int(h["qform_code"]))
print("load average", os.getloadavg())
