#!/usr/bin/env bash
# Pack what the GPU machine lacks to run the browser viewer's latency benchmark (issue 19) in one browser there:
# Debian's Chromium with every library it links (less glibc), a font, the Gradio + Playwright stack as unpacked
# cp312 wheels, and the built viewer. About 190 MB of xz, split into chunks that each fit one `device` call
# beside the working tree (benchmarks/device_session.sh: `chunk` for each but the last, `browser` with the last).
#
#   bash benchmarks/pack_browser.sh            # -> .browser/c0 c1 ... and .browser/sha256 (git-ignored)
set -euo pipefail
cd "$(dirname "$0")/.."
CHUNK=${CHUNK:-34M}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chr=$work/pack/chr
mkdir -p "$chr/chromium/locales" "$chr/lib" "$chr/fonts" "$work/pack/site" .browser/ui
src=/usr/lib/chromium
cp $src/{chromium,chrome_100_percent.pak,icudtl.dat,libEGL.so,libGLESv2.so,libvk_swiftshader.so,libvulkan.so.1} \
   $src/{resources.pak,snapshot_blob.bin,v8_context_snapshot.bin,vk_swiftshader_icd.json} "$chr/chromium/"
cp $src/locales/en-US.pak "$chr/chromium/locales/"
# linked libraries (glibc stays the host's), NSS's dlopened modules and Wayland's client (dlopened)
ldd $src/chromium | awk '{print $3}' | grep '^/' | grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so|ld-linux' \
  | xargs -I{} cp -L {} "$chr/lib/"
for l in libfreebl3 libfreeblpriv3 libnssckbi libnssdbm3 libsoftokn3; do cp -L /usr/lib/x86_64-linux-gnu/$l.* "$chr/lib/"; done
cp -L /lib/x86_64-linux-gnu/libwayland-client.so.0 "$chr/lib/"
cp /usr/share/fonts/truetype/dejavu/DejaVuSans{,-Bold}.ttf "$chr/fonts/"
cat > "$chr/fonts.conf" <<'XML'
<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "fonts.dtd">
<fontconfig><dir>/tmp/chr/fonts</dir><cachedir>/tmp/chr/fontcache</cachedir></fontconfig>
XML
cat > "$chr/chromium.sh" <<'SH'
#!/bin/sh
# Debian's Chromium with the libraries it links, on a machine that has none of them.
d=$(dirname "$(readlink -f "$0")")
export LD_LIBRARY_PATH="$d/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" FONTCONFIG_FILE="$d/fonts.conf"
exec "$d/chromium/chromium" "$@"
SH
chmod +x "$chr/chromium.sh"
# the UI's Python packages that the GPU machine lacks (versions of this venv; Gradio's SSR node server unused)
pkgs="annotated-types brotli dicom-anonymizer dicomweb-client fastapi gradio gradio-client greenlet groovy hf-gradio
highdicom importlib-resources opentelemetry-api orjson playwright pydantic pydantic-core pydub pyjpegls python-multipart
pytz retrying safehttpx semantic-version starlette tomlkit typing-inspection uvicorn"
reqs=$(for p in $pkgs; do .venv/bin/python -c "import importlib.metadata as m,sys; print(sys.argv[1]+'=='+m.version(sys.argv[1]))" $p; done)
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_27_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 -d .browser/ui $reqs
for w in .browser/ui/*.whl; do unzip -q -o "$w" -d "$work/pack/site"; done
rm -rf "$work/pack/site/gradio/templates/node"
cp -r app/viewer/static "$work/pack/viewer_static"
tar cf - -C "$work/pack" . | xz -T0 -6 > "$work/pack.tar.xz"
rm -f .browser/c[0-9]*
split -b "$CHUNK" -d -a 1 "$work/pack.tar.xz" .browser/c
(cd "$work" && sha256sum pack.tar.xz) > .browser/sha256
ls -la .browser/c* && cat .browser/sha256
