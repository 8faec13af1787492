"""What is fixed before the first step of a fit: the probe of labels.csv and a few images
(``probe``), the crop and colours (``geometry``), the input size (``input_size``), the dataset
loaded once (``loading``), the splits (``splits``) and how a run validates (``validation``), the
input normalization (``normalization``), the reference region (``reference``) and the plan of one
fit (``fit_plan``).
"""
