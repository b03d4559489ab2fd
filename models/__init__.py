"""Pure torch modules and maths: autoencoder, CLIP encoders, U-Net, schedules, samplers.

No files, no network, no logging: everything here runs on random tensors in a notebook.
"""
