"""Stage 3, training: kept pairs -> checkpoints. One training loop (`trainer`) for the
autoencoder (`autoencoder`), the CLIP towers (`clip`) and the latent diffusion U-Net
(`diffusion`); `registry` names them by kind; `torchrun` runs any of them on several
processes. Imports only the ground floor."""
