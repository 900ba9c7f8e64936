"""A finished job's verdict as DICOM (SR, SEG) and FHIR objects: built here, below every
room, so the gateway serves them and the delivery worker sends them to a tenant's PACS."""
