"""Audio data: WAV files, SC09 and LJSpeech, mel spectrograms, waveform pictures.

Every source becomes one int16 array [N, L, 1] (16-bit PCM, what the files hold, exactly): the
train step turns it into float32 in [-1, 1] (x / 32768) on the device, as images go from uint8.
Clips shorter than L are zero-padded at the end, longer ones keep their first L samples (SC09's
clips are at most 1 s = 16000 samples). Other sample rates are resampled with
scipy.signal.resample_poly when data.resample is true, else refused.

Sources (config.data.source with data.kind = "audio"):
  folder        a folder of .wav files (any depth; <path>/<split>/ if it exists), or a .tar.gz of
                them; with a Speech Commands archive, data.words keeps only those word folders
                and its validation_list.txt / testing_list.txt give the splits.
  sc09          Speech Commands v0.01 (Warden 2018) through TFDS's download manager, the ten digit
                folders zero..nine: SC09 (Donahue et al. 2019). (TFDS's `speech_commands` builder
                files the digits under `_unknown_`, so the archive itself is read.)
  ljspeech      TFDS `ljspeech` (22.05 kHz speech), resampled to data.sample_rate.
"""

import io
import math
import os
import tarfile
import warnings
from typing import Iterable, Iterator, Optional, Sequence, Tuple

import numpy as np
import scipy.io.wavfile
import scipy.signal
from absl import logging

from jdiff import files
from jdiff.errors import DataError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SC09_URL = "http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz"
WAV_SUFFIX = ".wav"
SPLIT_LISTS = {"validation": "validation_list.txt", "test": "testing_list.txt"}

# ------------------------------------------------------------------------------------------------
# Samples: int16 <-> float


def to_float(wave_int16):
  """int16 PCM -> float32 in [-1, 1) (x / 32768; numpy or jax arrays)."""
  return wave_int16.astype(np.float32) / 32768.0


def to_int16(wave) -> np.ndarray:
  """float in [-1, 1] -> int16 PCM (round(x * 32768), clipped): the inverse of to_float."""
  return np.clip(np.round(np.asarray(wave, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


# ------------------------------------------------------------------------------------------------
# WAV files


def read_wav(file, where: str = "") -> Tuple[int, np.ndarray]:
  """(sample rate, int16 mono [L]) of a 16-bit PCM WAV (a path or a binary file object).

  Several channels are averaged to one. Any other sample format raises DataError.
  """
  where = where or str(file)
  try:
    with warnings.catch_warnings():
      # A truncated or oddly chunked file is an error here, not a warning in the training log.
      warnings.simplefilter("error", scipy.io.wavfile.WavFileWarning)
      rate, data = scipy.io.wavfile.read(file)
      bits = _bits_per_sample(file)
  except (ValueError, OSError, EOFError, scipy.io.wavfile.WavFileWarning) as e:
    reason = str(e).splitlines()[0] if str(e) else repr(e)
    raise DataError(f"{where}: unreadable as WAV ({reason}); the file may be truncated: remove or "
                    "replace it") from None
  if data.dtype != np.int16:
    what = f"{bits}-bit PCM" if data.dtype.kind in "iu" and bits else f"{data.dtype} samples"
    if data.dtype.kind == "f":
      what = f"{bits}-bit floating point" if bits else "floating point"
    raise DataError(f"{where}: {what}; expected 16-bit PCM; convert it, e.g. "
                    "sox in.wav -b 16 out.wav")
  if data.ndim == 2:
    data = np.round(data.astype(np.float64).mean(axis=1)).astype(np.int16)
  return int(rate), data


def _bits_per_sample(file) -> Optional[int]:
  """The fmt chunk's bits per sample (scipy reports 24-bit PCM as int32), or None."""
  if isinstance(file, (str, os.PathLike)):
    with open(file, "rb") as f:
      header = f.read(4096)
  else:
    position = file.tell()
    file.seek(0)
    header = file.read(4096)
    file.seek(position)
  start = header.find(b"fmt ")
  if start < 0 or len(header) < start + 24:
    return None
  return int.from_bytes(header[start + 22:start + 24], "little")


def write_wav(path: str, rate: int, wave) -> str:
  """Writes int16 PCM mono (a float wave in [-1, 1] is converted with to_int16), atomically."""
  wave = np.asarray(wave).reshape(-1)
  if wave.dtype != np.int16:
    wave = to_int16(wave)
  files.write_with(path, lambda f: scipy.io.wavfile.write(f, rate, wave), sync=False)
  return path


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
  """int16 wave at `rate` -> int16 at target_rate (polyphase filter, scipy.signal.resample_poly)."""
  if rate == target_rate:
    return wave
  g = math.gcd(rate, target_rate)
  out = scipy.signal.resample_poly(wave.astype(np.float64), target_rate // g, rate // g)
  return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def fit_length(wave: np.ndarray, length: int) -> np.ndarray:
  """The first `length` samples, zero-padded at the end if shorter."""
  out = np.zeros((length,), np.int16)
  out[:min(length, len(wave))] = wave[:length]
  return out


def _prepare(rate: int, wave: np.ndarray, where: str, sample_rate: int, length: int,
             allow_resample: bool) -> np.ndarray:
  if rate != sample_rate:
    if not allow_resample:
      raise DataError(f"{where}: sample rate {rate} Hz; config.data.sample_rate is {sample_rate} "
                      "(set config.data.resample=True to resample, or convert the files)")
    wave = resample(wave, rate, sample_rate)
  return fit_length(wave, length)


# ------------------------------------------------------------------------------------------------
# Folders and archives of WAVs


def _word_of(relpath: str) -> str:
  parts = relpath.replace("\\", "/").split("/")
  return parts[-2] if len(parts) >= 2 else ""


def _keep(relpath: str, words: Sequence[str], split: str, lists: dict) -> bool:
  """Whether an archive member belongs to the requested words and split (Speech Commands lists:
  validation / test hold their files; train is every file in neither)."""
  if words and _word_of(relpath) not in words:
    return False
  if not lists:
    return True
  key = "/".join(relpath.replace("\\", "/").split("/")[-2:])
  if split in lists:
    return key in lists[split]
  return all(key not in listed for listed in lists.values())


def _archive_members(path: str) -> Iterator[Tuple[str, bytes]]:
  with tarfile.open(path, "r:*") as archive:
    for member in archive:
      if member.isfile():
        yield member.name, archive.extractfile(member).read()


def read_archive(path: str, *, words: Sequence[str] = (), split: str = "train",
                 sample_rate: int = 16000, length: int = 16000, allow_resample: bool = True
                 ) -> Tuple[np.ndarray, list]:
  """(int16 [N, length, 1], word of each clip) from a .tar(.gz) of WAVs, sorted by path.

  Speech Commands layout: <word>/<speaker>_nohash_<k>.wav; its validation_list.txt and
  testing_list.txt (when present) define the splits "validation" and "test", the rest is "train"
  (without them every clip is in every split).
  """
  lists, clips = {}, {}
  try:
    for name, payload in _archive_members(path):
      base = os.path.basename(name)
      for split_name, list_name in SPLIT_LISTS.items():
        if base == list_name:
          lists[split_name] = set(payload.decode().split())
      if name.lower().endswith(WAV_SUFFIX) and (not words or _word_of(name) in words):
        clips[name] = payload
  except (tarfile.TarError, OSError, EOFError) as e:
    raise DataError(f"{path}: unreadable as a .tar.gz of WAV files ({e})") from e
  names = sorted(name for name in clips if _keep(name, words, split, lists))
  if not names:
    raise DataError(f"{path}: no .wav files" + (f" in folders {list(words)}" if words else "")
                    + f" for split {split!r}")
  waves = np.stack([_prepare(*read_wav(io.BytesIO(clips[name]), f"{path}:{name}"),
                             f"{path}:{name}", sample_rate, length, allow_resample)
                    for name in names])
  return waves[..., None], [_word_of(name) for name in names]


def read_folder(path: str, *, words: Sequence[str] = (), split: str = "train",
                sample_rate: int = 16000, length: int = 16000, allow_resample: bool = True
                ) -> Tuple[np.ndarray, list]:
  """(int16 [N, length, 1], word of each clip) from a folder of WAVs (<path>/<split>/ if it
  exists), sorted by path; `words` keeps only files whose parent folder is one of them."""
  if os.path.isfile(path):
    return read_archive(path, words=words, split=split, sample_rate=sample_rate, length=length,
                        allow_resample=allow_resample)
  if os.path.isdir(os.path.join(path, split)):
    path = os.path.join(path, split)
  files = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names
                 if name.lower().endswith(WAV_SUFFIX)
                 and (not words or os.path.basename(root) in words))
  if not files:
    raise DataError(f"{path}: no .wav files found" + (f" in folders {list(words)}" if words else "")
                    + "; set config.data.path to a folder (or .tar.gz) of 16-bit WAV files")
  waves = np.stack([_prepare(*read_wav(f), f, sample_rate, length, allow_resample) for f in files])
  return waves[..., None], [os.path.basename(os.path.dirname(f)) for f in files]


# ------------------------------------------------------------------------------------------------
# Downloaded sets (TFDS)


def _cache_path(data_dir: str, name: str, split: str, sample_rate: int, length: int) -> str:
  root = data_dir or os.path.expanduser("~/tensorflow_datasets")
  file_name = f"{name}_{split.replace(':', '_')}_{sample_rate}_{length}.npy"
  return os.path.join(root, "jdiff_cache", file_name)


def _cached(cache: str, make) -> np.ndarray:
  """np.load(cache) (memory-mapped), making it first with make() -> int16 array if absent."""
  cached = files.load_npy_cache(cache)
  if cached is None:
    files.save_npy(cache, make())
  return np.load(cache, mmap_mode="r")


def _download_failed(name: str, error: Exception) -> DataError:
  return DataError(
      f"{name} could not be downloaded ({str(error).splitlines()[0] if str(error) else error!r}); "
      "where there is network run the same command once (it caches under data.data_dir), or use "
      "data.source=folder with data.path pointing at a folder or .tar.gz of WAV files")


def load_sc09(split: str, sample_rate: int, length: int, data_dir: str) -> np.ndarray:
  """SC09: the digit folders of Speech Commands v0.01, downloaded once by TFDS's download
  manager, split by the archive's validation/testing lists, cached as int16 .npy."""
  def make():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    root = data_dir or os.path.expanduser("~/tensorflow_datasets")
    try:
      archive = tfds.download.DownloadManager(
          download_dir=os.path.join(root, "downloads")).download(SC09_URL)
    except Exception as e:  # pylint: disable=broad-except  (no network raises many types)
      raise _download_failed("SC09 (Speech Commands v0.01)", e) from e
    return read_archive(os.fspath(archive), words=DIGITS, split=split, sample_rate=sample_rate,
                        length=length)[0]
  return _cached(_cache_path(data_dir, "sc09", split, sample_rate, length), make)


def load_ljspeech(split: str, sample_rate: int, length: int, data_dir: str) -> np.ndarray:
  """TFDS `ljspeech` (22.05 kHz) resampled to sample_rate, each utterance cut into consecutive
  clips of `length` samples (the last, partial one dropped), cached as int16 .npy."""
  def make():
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      dataset = tfds.load("ljspeech", split=split, data_dir=data_dir or None, shuffle_files=False)
    except Exception as e:  # pylint: disable=broad-except
      raise _download_failed("TFDS ljspeech", e) from e
    clips = []
    for i, example in enumerate(tfds.as_numpy(dataset)):
      wave = resample(example["speech"].astype(np.int16), 22050, sample_rate)
      clips.extend(wave[start:start + length]
                   for start in range(0, len(wave) - length + 1, length))
      if i % 1000 == 0:
        logging.info("decoding ljspeech: %d utterances, %d clips", i, len(clips))
    return np.stack(clips)[..., None]
  return _cached(_cache_path(data_dir, "ljspeech", split, sample_rate, length), make)


def normalize_peaks(waves: np.ndarray, peak: float) -> np.ndarray:
  """Each int16 clip scaled so that its largest |sample| is `peak` of full scale (silent clips
  are left as they are): SC09's clips are quiet (std ~0.09), which a short training run mostly
  drowns in the diffusion noise."""
  waves = np.asarray(waves)
  peaks = np.abs(waves.astype(np.float64)).max(axis=tuple(range(1, waves.ndim)), keepdims=True)
  gains = np.where(peaks > 0, peak * 32767.0 / np.maximum(peaks, 1.0), 1.0)
  return np.clip(np.round(waves * gains), -32768, 32767).astype(np.int16)


def _load(d) -> np.ndarray:
  common = dict(split=d.split, sample_rate=d.sample_rate, length=d.audio_length)
  if d.source == "sc09" and d.path:
    # A local copy (folder or .tar.gz of Speech Commands): its digit folders, no download.
    if not os.path.exists(d.path):
      raise DataError(f"config.data.path={d.path!r}: does not exist (data.source='sc09' reads the "
                      "digit folders of this local copy; leave data.path empty to download)")
    return read_folder(d.path, words=tuple(d.words) or DIGITS, allow_resample=d.resample,
                       **common)[0]
  if d.source == "sc09":
    return load_sc09(data_dir=d.data_dir, **common)
  if d.source == "ljspeech":
    return load_ljspeech(data_dir=d.data_dir, **common)
  if d.source == "folder":
    if not os.path.exists(d.path):
      raise DataError(f"config.data.path={d.path!r}: does not exist (data.source='folder')")
    return read_folder(d.path, words=tuple(d.words), allow_resample=d.resample, **common)[0]
  raise DataError(f"config.data.source={d.source!r}: not an audio source")


def load_audio(data_config) -> np.ndarray:
  """int16 [N, L, 1] for config.data (data.kind = "audio"), each clip peak-normalised when
  data.peak_normalize > 0; DataError with what to do on failure."""
  waves = _load(data_config)
  peak = data_config.get("peak_normalize", 0.0)
  return normalize_peaks(waves, peak) if peak else waves


# ------------------------------------------------------------------------------------------------
# Mel spectrograms (the vocoder's conditioning; also the classifier's input)


def hz_to_mel(hz):
  """Slaney's mel scale (linear below 1 kHz, logarithmic above; librosa's default)."""
  hz = np.asarray(hz, np.float64)
  log_step = math.log(6.4) / 27.0
  return np.where(hz < 1000.0, hz * 3.0 / 200.0,
                  15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step)


def mel_to_hz(mel):
  mel = np.asarray(mel, np.float64)
  log_step = math.log(6.4) / 27.0
  return np.where(mel < 15.0, mel * 200.0 / 3.0, 1000.0 * np.exp(log_step * (mel - 15.0)))


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
  """[n_fft // 2 + 1, n_mels] triangular filters on the Slaney mel scale, area-normalised."""
  freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
  edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
  lower = (freqs[:, None] - edges[None, :-2]) / (edges[1:-1] - edges[:-2])[None]
  upper = (edges[None, 2:] - freqs[:, None]) / (edges[2:] - edges[1:-1])[None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  return (weights * (2.0 / (edges[2:] - edges[:-2]))[None]).astype(np.float32)


def mel_spectrogram(waves, sample_rate: int = 22050, n_fft: int = 1024, hop: int = 256,
                    n_mels: int = 80, fmin: float = 20.0, fmax: Optional[float] = None):
  """[B, L] (or [B, L, 1]) float waves -> [B, L // hop, n_mels] in [0, 1] (jax.numpy; jittable).

  DiffWave's vocoder features (lmnt-com/diffwave preprocess.py): periodic Hann window of n_fft,
  hop `hop`, magnitude (power 1) STFT with centred frames (reflect padding), Slaney mel filters
  fmin..fmax (fmax None: sample_rate / 2), 20 log10(max(mel, 1e-5)) - 20, then
  clip((db + 100) / 100, 0, 1). Defaults are its LJSpeech parameters (22.05 kHz, 1024, 256, 80).
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  waves = jnp.asarray(waves, jnp.float32)
  if waves.ndim == 3:
    waves = waves[..., 0]
  padded = jnp.pad(waves, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
  num_frames = waves.shape[1] // hop
  starts = np.arange(num_frames) * hop
  frames = padded[:, starts[:, None] + np.arange(n_fft)[None, :]]  # [B, frames, n_fft]
  window = np.asarray(scipy.signal.get_window("hann", n_fft, fftbins=True), np.float32)
  magnitude = jnp.abs(jnp.fft.rfft(frames * window, axis=-1))
  mel = magnitude @ mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax or sample_rate / 2.0)
  db = 20.0 * jnp.log10(jnp.maximum(mel, 1e-5)) - 20.0
  return jnp.clip((db + 100.0) / 100.0, 0.0, 1.0)


def periodicity(waves, sample_rate: int, frame_seconds: float = 0.064, min_pitch: float = 60.0,
                max_pitch: float = 400.0, floor_db: float = -20.0) -> np.ndarray:
  """[N, L] (or [N, L, 1]; int16 or float) clips -> [N] how voiced each clip is, in [-1, 1].

  Per frame (frame_seconds long, half-overlapping, mean removed): the peak over pitch lags
  (sample_rate / max_pitch .. sample_rate / min_pitch samples) of the normalised autocorrelation
  sum_n x[n] x[n + lag] / sqrt(sum_n x[n]^2 sum_n x[n + lag]^2) (n over the frame's overlap);
  per clip: the median over its loud frames (RMS within floor_db of its loudest). A periodic
  waveform (a voiced vowel) scores near 1 and white noise near 0.15 at 4 kHz; real SC09 words
  score 0.65-0.96. The mel spectrogram cannot show this: it is what separates a voiced vocoder
  output from noise shaped like the word (docs/results/audio_cpu/). A clip with no loud frame
  (all zero) scores 0.
  """
  waves = np.asarray(waves)
  if waves.ndim == 3:
    waves = waves[..., 0]
  waves = (to_float(waves) if waves.dtype == np.int16 else waves).astype(np.float64)
  frame = int(round(frame_seconds * sample_rate))
  lags = np.arange(int(math.ceil(sample_rate / max_pitch)), int(sample_rate / min_pitch) + 1)
  if frame > waves.shape[1] or lags[-1] >= frame // 2:
    raise ValueError(f"periodicity: {frame}-sample frames need clips of >= {frame} samples and "
                     f"lags < {frame // 2} (got {waves.shape[1]} samples, lags up to {lags[-1]})")
  starts = np.arange(0, waves.shape[1] - frame + 1, frame // 2)
  frames = waves[:, starts[:, None] + np.arange(frame)[None, :]]
  frames = frames - frames.mean(axis=-1, keepdims=True)
  peak = np.full(frames.shape[:2], -1.0)
  for lag in lags:
    head, tail = frames[..., :-lag], frames[..., lag:]
    norm = np.sqrt(np.sum(head * head, -1) * np.sum(tail * tail, -1))
    peak = np.maximum(peak, np.sum(head * tail, -1) / np.maximum(norm, 1e-20))
  rms = np.sqrt(np.mean(frames ** 2, axis=-1))
  loud = (rms > 0) & (rms >= rms.max(axis=1, keepdims=True) * 10.0 ** (floor_db / 20.0))
  return np.array([np.median(p[m]) if m.any() else 0.0 for p, m in zip(peak, loud)])


# ------------------------------------------------------------------------------------------------
# Pictures


def save_waveforms_png(waves: Iterable[np.ndarray], sample_rate: int, path: str,
                       titles: Optional[Sequence[str]] = None, max_clips: int = 8) -> str:
  """One row per clip: its waveform and its spectrogram (dB), as a PNG (matplotlib)."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top  (no pyplot state)
  waves = [to_float(np.asarray(w).reshape(-1)) if np.asarray(w).dtype == np.int16
           else np.asarray(w, np.float32).reshape(-1) for w in list(waves)[:max_clips]]
  fig = Figure(figsize=(10, 1.8 * len(waves)))
  axes = fig.subplots(len(waves), 2, squeeze=False)
  for i, wave in enumerate(waves):
    seconds = np.arange(len(wave)) / sample_rate
    axes[i, 0].plot(seconds, wave, linewidth=0.4)
    axes[i, 0].set_ylim(-1, 1)
    axes[i, 0].set_ylabel(titles[i] if titles else f"#{i}", fontsize=8)
    # 512-sample windows (32 ms at 16 kHz); short clips get several windows all the same.
    nfft = int(min(512, 2 ** max(4, int(np.log2(max(len(wave) // 4, 1))))))
    axes[i, 1].specgram(wave + 1e-9, NFFT=nfft, Fs=sample_rate, noverlap=3 * nfft // 4,
                        cmap="magma")
  axes[-1, 0].set_xlabel("seconds")
  axes[-1, 1].set_xlabel("seconds (spectrogram, Hz)")
  fig.tight_layout()
  files.write_with(path, lambda f: fig.savefig(f, dpi=80, format="png"))
  return path
