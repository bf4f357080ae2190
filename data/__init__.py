"""Dataset preparation: download public data and write TFRecords with a feature config."""
