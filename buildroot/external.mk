include $(sort $(wildcard $(BR2_EXTERNAL_FIELDGATE_PATH)/package/*/*.mk))
